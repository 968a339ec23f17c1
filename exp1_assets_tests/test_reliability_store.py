"""Reliability of the artifact store: one writer per artifact, and a full disk said plainly."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from dagster import Failure, materialize

from exp1_assets.defs.store import ArtifactStore
from exp1_assets_tests.test_graph import _assets
from exp1_assets_tests.tmpfs import fill_disk, mounted_tmpfs

HOLD = """
import sys, time
from exp1_assets.defs.store import ArtifactStore
with ArtifactStore(root=sys.argv[1]).staging("model_checkpoint", "tiny") as out:
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_of_the_same_partition_fails_fast_naming_the_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        store = ArtifactStore(root=str(tmp_path))
        with pytest.raises(Failure) as caught:
            with store.staging("model_checkpoint", "tiny"):
                pytest.fail("the body must not run while another run writes")
        assert f"model_checkpoint[tiny] is being written by another run (pid {holder.pid})" in str(caught.value)
        assert caught.value.allow_retries is False
        with store.staging("model_checkpoint", "125M") as out:  # another size is another artifact
            (out / "ok").write_text("x")
        assert (tmp_path / "model_checkpoint" / "125M" / "ok").exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
    with ArtifactStore(root=str(tmp_path)).staging("model_checkpoint", "tiny") as out:
        (out / "ok").write_text("x")
    assert (tmp_path / "model_checkpoint" / "tiny" / "ok").exists()


def test_two_sizes_written_at_once_both_commit(tmp_path: Path) -> None:
    store, both_inside, errors = ArtifactStore(root=str(tmp_path)), threading.Barrier(2, timeout=10), []

    def write(size: str) -> None:
        try:
            with store.staging("model_checkpoint", size) as out:
                both_inside.wait()  # both writers are inside their staging at the same moment
                (out / "weights").write_text(size)
        except Exception as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(size,)) for size in ("tiny", "125M")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert {p.name: (p / "weights").read_text() for p in (tmp_path / "model_checkpoint").iterdir()
            if not p.name.startswith(".")} == {"tiny": "tiny", "125M": "125M"}


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs; unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "small_disk", size="4m") as mount:
        yield mount


def test_disk_full_fails_clearly_and_keeps_the_previous_artifact(small_disk: Path, monkeypatch) -> None:
    monkeypatch.setenv("EXP1_HOME", str(small_disk))
    store = ArtifactStore()
    run_config = {"ops": {"raw_conversations": {"config": {"builtin_size": 300}}}}
    assert materialize(_assets("raw_conversations"), resources={"store": store}, run_config=run_config).success
    final = small_disk / "raw_conversations"
    before = {p.name: p.read_bytes() for p in final.iterdir()}
    fill_disk(small_disk, leave_bytes=16 * 1024)  # ~16 KB left: the write starts, then fails
    result = materialize(_assets("raw_conversations"), resources={"store": store}, raise_on_error=False,
                         run_config={"ops": {"raw_conversations": {"config": {"builtin_size": 3000}}}})
    assert not result.success
    failure = result.failure_data_for_node("raw_conversations")
    message = failure.user_failure_data.description if failure.user_failure_data else str(failure.error)
    assert f"disk full while writing {final}: free space or point EXP1_HOME elsewhere" in message
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before  # the previous artifact, intact
    assert not [p.name for p in small_disk.iterdir() if p.name.startswith((".tmp-", ".old-"))]


# ---- the plain storage layer and the resource's conversion (no Dagster run) ------------------------

def test_the_storage_layer_raises_its_own_busy_error_and_the_resource_a_failure(tmp_path: Path) -> None:
    import os

    from exp1_assets.storage import ArtifactBusy, ArtifactRoot

    root = ArtifactRoot(tmp_path)
    with root.staging("tokenizer"):  # a second open of the lock file conflicts even in this process
        with pytest.raises(ArtifactBusy) as caught:
            with root.staging("tokenizer"):
                pytest.fail("the body must not run while another writer holds the lock")
        assert caught.value.name == "tokenizer" and caught.value.holder == str(os.getpid())
        with pytest.raises(Failure, match=f"^tokenizer is being written by another run \\(pid {os.getpid()}\\)"):
            with ArtifactStore(root=str(tmp_path)).staging("tokenizer"):
                pytest.fail("the body must not run while another writer holds the lock")
        # Pruning never waits for a writer: it skips this time.
        assert root.prune_run_dirs("tokenizer", current=root.run_dir("tokenizer", key="a"), keep=1) == []


def test_a_full_disk_in_the_body_is_disk_full_and_the_previous_artifact_stays(tmp_path: Path) -> None:
    import errno

    from exp1_assets.storage import ArtifactRoot, DiskFull

    root = ArtifactRoot(tmp_path)
    with root.staging("splits") as out:
        (out / "train").write_text("v1")
    with pytest.raises(DiskFull) as caught:
        with root.staging("splits") as out:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(caught.value).startswith(f"disk full while writing {tmp_path / 'splits'}: free space or point "
                                        "EXP1_HOME elsewhere")
    store = ArtifactStore(root=str(tmp_path))
    with pytest.raises(Failure) as failed:
        with store.staging("splits"):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert failed.value.allow_retries is False and "disk full while writing" in failed.value.description
    with pytest.raises(KeyError):  # anything else passes through unchanged
        with store.staging("splits"):
            raise KeyError("x")
    assert (tmp_path / "splits" / "train").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock-splits", "splits"]


def test_pruning_keeps_the_current_and_the_most_recently_used_run_dirs(tmp_path: Path) -> None:
    import os
    import time

    store = ArtifactStore(root=str(tmp_path), keep_run_dirs=2)
    dirs = [store.run_dir("model_checkpoint", "tiny", key=k) for k in ("a", "b", "c", "d")]
    for age, path in zip((40, 30, 20, 10), dirs):  # "d" was used last, "a" (the current one) first
        then = time.time() - age
        os.utime(path, (then, then))
    pruned = store.prune_run_dirs("model_checkpoint", "tiny", current=dirs[0])
    assert sorted(p.name for p in pruned) == ["b", "c"]
    assert sorted(p.name for p in (tmp_path / "runs" / "model_checkpoint" / "tiny").iterdir()) == ["a", "d"]
    assert ArtifactStore(root=str(tmp_path), keep_run_dirs=None).prune_run_dirs(
        "model_checkpoint", "tiny", current=dirs[0]) == []  # unset: keep them all
