"""Reliability: damaged checkpoints, planted pickles, and secrets that must never reach the disk.

One FAST run (data -> tiny model -> evaluation -> samples, 12 steps, checkpoints at 6 and 12) is
made once for the module with secrets planted in the environment; each test damages its own copy.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
from dagster import instance_for_test, materialize

from exp1_assets.defs.launcher import JobLauncher
from exp1_assets.defs.store import ArtifactStore
from exp1_assets.training.integrity import MANIFEST_NAME, verify_checkpoint, write_manifest
from exp1_assets.training.train import latest_checkpoint
from exp1_assets_tests.run_configs import fast_run_config, only
from exp1_assets_tests.test_graph import DATA, _assets
from exp1_assets_tests.tmpfs import fill_disk, mounted_tmpfs

pytestmark = pytest.mark.slow

SECRETS = {"WANDB_API_KEY": "wandb-secret-5f2b9c0e71d4", "HF_TOKEN": "hf_secretTOKEN8a6d21c3"}
TRAINED = (*DATA, "model_checkpoint", "evaluation_report", "sample_set")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """EXP1_HOME and DAGSTER_HOME of one whole FAST run made with secrets in the environment."""
    root = tmp_path_factory.mktemp("reliability")
    home, dagster_home = root / "exp1_home", root / "dagster_home"
    dagster_home.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SECRETS.items():
            patch.setenv(name, value)
        with instance_for_test(temp_dir=str(dagster_home)) as instance:
            result = materialize(_assets(*TRAINED), instance=instance, partition_key="tiny",
                                 run_config=only(fast_run_config(), *TRAINED),
                                 resources={"store": ArtifactStore(root=str(home)), "launcher": JobLauncher()})
    assert result.success
    return {"home": home, "dagster_home": dagster_home}


@pytest.fixture
def home(trained: dict[str, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "exp1_home"
    shutil.copytree(trained["home"], copy)
    return copy


def _materialize(home: Path, *assets: str, logs: list[str] | None = None):
    """Materialize `assets` for tiny; the run's log messages (Pipes logs included) go to `logs`."""
    config = only(fast_run_config(), *assets)
    with instance_for_test() as instance:
        result = materialize(_assets(*assets), instance=instance, partition_key="tiny", run_config=config,
                             resources={"store": ArtifactStore(root=str(home)), "launcher": JobLauncher()},
                             raise_on_error=False)
        if logs is not None:
            logs.extend(entry.user_message for entry in instance.all_logs(result.run_id))
        return result


def _failure_message(result, node: str) -> str:
    failure = result.failure_data_for_node(node)
    return failure.user_failure_data.description if failure.user_failure_data else str(failure.error)


def _run_dir(home: Path) -> Path:
    (run_dir,) = (home / "runs" / "model_checkpoint" / "tiny").iterdir()
    return run_dir


# ---- the manifest itself (no training) ----------------------------------------------------

def _fake_checkpoint(folder: Path) -> Path:
    from safetensors.torch import save_file
    import torch

    folder.mkdir()
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(folder / "model.safetensors"))
    (folder / "trainer_state.json").write_text("{}")
    write_manifest(folder)
    return folder / "model.safetensors"


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "delete", "garbage_header"])
def test_verify_checkpoint_names_the_damaged_file(tmp_path: Path, damage: str) -> None:
    weights = _fake_checkpoint(tmp_path / "checkpoint-6")
    assert verify_checkpoint(weights.parent) is None
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":  # same size, valid header: only the checksum can tell
        weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif damage == "delete":
        weights.unlink()
    else:
        weights.write_bytes(b"\xff" * len(data))
    problem = verify_checkpoint(weights.parent)
    assert problem is not None and str(weights) in problem


def test_old_checkpoints_without_a_manifest_still_get_header_checks(tmp_path: Path) -> None:
    weights = _fake_checkpoint(tmp_path / "checkpoint-6")
    (weights.parent / MANIFEST_NAME).unlink()
    assert verify_checkpoint(weights.parent) is None
    weights.write_bytes(weights.read_bytes()[:-10])
    assert "truncated" in verify_checkpoint(weights.parent)


# ---- through the graph --------------------------------------------------------------------

def test_every_checkpoint_and_the_final_model_carry_a_verified_manifest(home: Path) -> None:
    folders = [*_run_dir(home).glob("checkpoint-*"), home / "model_checkpoint" / "tiny"]
    assert len(folders) == 3  # checkpoint-6, checkpoint-12 and the final model
    for folder in folders:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())["files"]
        assert "model.safetensors" in manifest
        assert verify_checkpoint(folder) is None


def test_a_single_rank_job_trains_on_every_core(home: Path) -> None:
    """accelerate sets OMP_NUM_THREADS=1 unless told otherwise: a one-rank job used one core of two."""
    trained = json.loads((home / "model_checkpoint" / "tiny" / "train_result.json").read_text())
    assert trained["world_size"] == 1 and trained["torch_threads"] == len(os.sched_getaffinity(0))


def test_resume_skips_a_truncated_latest_checkpoint(home: Path) -> None:
    weights = _run_dir(home) / "checkpoint-12" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    logs: list[str] = []
    result = _materialize(home, "model_checkpoint", logs=logs)
    assert result.success
    trained = json.loads((home / "model_checkpoint" / "tiny" / "train_result.json").read_text())
    assert trained["resumed_from_step"] == 6 and trained["steps"] == 12  # redid 6 steps from the good one
    warning = next(m for m in logs if "skipping damaged checkpoint" in m)
    assert "checkpoint-12" in warning and "model.safetensors" in warning and "truncated" in warning
    assert verify_checkpoint(_run_dir(home) / "checkpoint-12") is None  # rewritten whole


def test_evaluation_refuses_a_corrupted_final_model(home: Path) -> None:
    weights = home / "model_checkpoint" / "tiny" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped bit-pattern deep in the tensor data: loads fine, is wrong
    weights.write_bytes(bytes(data))
    before = (home / "evaluation_report" / "tiny" / "report.json").read_text()
    result = _materialize(home, "evaluation_report")
    assert not result.success
    message = _failure_message(result, "evaluation_report")
    assert str(weights) in message and "rematerialize model_checkpoint[tiny]" in message
    assert (home / "evaluation_report" / "tiny" / "report.json").read_text() == before  # old report intact


def test_evaluation_refuses_a_tokenizer_that_does_not_match_the_model(home: Path) -> None:
    from transformers import AutoTokenizer

    from exp1_assets.evaluation.job_common import load_checkpoint

    checkpoint = home / "model_checkpoint" / "tiny"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.add_tokens([f"extra_token_{i}" for i in range(50)])
    tokenizer.save_pretrained(checkpoint)
    write_manifest(checkpoint)  # a folder assembled by hand: consistent files, wrong pairing
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but the model's embedding has \d+ rows"):
        load_checkpoint(str(checkpoint), device="cpu")


class _Marker:
    """Unpickling this creates a file: the proof that something unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_planted_pickles_are_never_unpickled(home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Marker(marker))
    assert not marker.exists()
    for folder in (_run_dir(home) / "checkpoint-12", home / "model_checkpoint" / "tiny"):
        for name in ("pytorch_model.bin", "training_args.bin"):
            (folder / name).write_bytes(payload)
    resumed = _materialize(home, "model_checkpoint")  # resumes from the planted checkpoint-12
    assert resumed.success
    for folder in (home / "model_checkpoint" / "tiny",):
        (folder / "pytorch_model.bin").write_bytes(payload)  # the new final model: plant again
    evaluated = _materialize(home, "evaluation_report", "sample_set")
    assert evaluated.success
    assert not marker.exists()


def test_planted_secrets_never_reach_any_file(trained: dict[str, Path], tmp_path: Path) -> None:
    """Metadata, logs, specs, Pipes messages, the sqlite event log: grep every byte for them."""
    from exp1_assets.launch.sbatch import render_sbatch

    files = [p for root in trained.values() for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in files) and any(p.name == "spec.json" for p in files)
    assert any(p.name == "job.log" for p in files)
    leaks = [(str(p), name) for p in files for name, value in SECRETS.items() if value.encode() in p.read_bytes()]
    assert not leaks
    launcher = JobLauncher(backend="slurm", extra_env=dict(SECRETS), setup_script="source venv/bin/activate")
    script = render_sbatch(launcher.sbatch_request(job_name="exp1-train-tiny", module="m",
                                                   spec_path=tmp_path / "spec.json", log_path=tmp_path / "l.log"))
    assert not [value for value in SECRETS.values() if value in script]


def test_disk_full_inside_the_training_job_fails_clearly_and_keeps_the_model(
        trained: dict[str, Path], tmp_path: Path) -> None:
    """The launched job hits ENOSPC writing its first checkpoint: a clear Failure, nothing lost."""
    with mounted_tmpfs(tmp_path / "disk", size="256m") as disk:
        home = disk / "exp1_home"
        shutil.copytree(trained["home"], home)
        final = home / "model_checkpoint" / "tiny"
        before = {p.name: p.read_bytes() for p in final.iterdir()}
        weights = (final / "model.safetensors").stat().st_size
        fill_disk(disk, leave_bytes=weights // 2)  # room for the spec and logs, not for weights
        config = only(fast_run_config(), "model_checkpoint")
        config["ops"]["model_checkpoint"]["config"]["seed"] = 1  # a new spec: trains from step 0
        logs: list[str] = []
        with instance_for_test() as instance:
            result = materialize(_assets("model_checkpoint"), instance=instance, partition_key="tiny",
                                 run_config=config, raise_on_error=False,
                                 resources={"store": ArtifactStore(root=str(home)), "launcher": JobLauncher()})
            logs.extend(entry.user_message for entry in instance.all_logs(result.run_id))
        assert not result.success
        message = _failure_message(result, "model_checkpoint")
        assert f"disk full while writing {final}: free space or point EXP1_HOME elsewhere" in message
        assert "No space left on device" in message and "rank 0" in message  # the job's own error
        assert any("training tiny" in m for m in logs)  # it failed inside the launched job, not before
        assert {p.name: p.read_bytes() for p in final.iterdir()} == before  # the previous model, intact
        assert not [p.name for p in final.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]
        # Whatever the failed job left in its own run dir is never mistaken for a good checkpoint.
        runs = home / "runs" / "model_checkpoint" / "tiny"
        new_run = next(d for d in runs.iterdir() if json.loads((d / "spec.json").read_text())["seed"] == 1)
        assert all(verify_checkpoint(c) is not None for c in new_run.glob("checkpoint-*"))
        assert latest_checkpoint(new_run) is None  # a retry after freeing space starts clean
