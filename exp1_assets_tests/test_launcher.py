"""The launcher for real: `accelerate launch` under Dagster, two ranks, failures, kill + resume, cancel."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from exp1_assets.defs.launcher import JobLauncher
from exp1_assets.defs.store import ArtifactStore
from exp1_assets_tests.cli_run import start_materialize
from exp1_assets_tests.run_configs import fast_run_config, only
from exp1_assets_tests.test_graph import _assets

pytestmark = pytest.mark.slow


@pytest.fixture
def home(data_home: Path, tmp_path: Path) -> Path:
    """Each test trains into its own copy of the session's data (conftest.data_home)."""
    import shutil

    copy = tmp_path / "exp1_home"
    shutil.copytree(data_home, copy)
    return copy


def _train(home: Path, *, launcher: JobLauncher, **train_config):
    config = only(fast_run_config(), "model_checkpoint")
    config["ops"]["model_checkpoint"]["config"].update(train_config)
    with DagsterInstance.ephemeral() as instance:
        return materialize(_assets("model_checkpoint"), instance=instance, partition_key="tiny", run_config=config,
                           resources={"store": ArtifactStore(root=str(home)), "launcher": launcher},
                           raise_on_error=False)


def _job_processes(marker: str) -> list[int]:
    """PIDs whose command line mentions `marker` (the run's spec path), excluding zombies."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def test_two_ranks_train_through_the_launcher(home: Path) -> None:
    result = _train(home, launcher=JobLauncher(num_processes=2))
    assert result.success
    trained = json.loads((home / "model_checkpoint" / "tiny" / "train_result.json").read_text())
    assert trained["world_size"] == 2 and trained["steps"] == 12
    # The cores are shared among the ranks (accelerate alone would give each rank one thread).
    assert trained["torch_threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert trained["val_loss_after"] < trained["val_loss_before"]
    mat = result.asset_materializations_for_node("model_checkpoint")[0]
    assert {"param_count", "tokens_per_s", "loss_curve", "val_loss_after", "memory_plan", "strategy",
            "resumed", "train_spec"} <= set(mat.metadata)
    # Two CPU ranks share this machine's RAM: the plan counts two devices and chose DDP for tiny.
    plan = mat.metadata["memory_plan"].value
    assert plan["machine"]["devices"] == 2 and plan["machine"]["kind"] == "cpu" and plan["strategy"] == "ddp"
    assert mat.metadata["strategy"].value == trained["strategy"] == "ddp"
    # Metadata and the saved spec point at the committed model, not the staging dir it was written to.
    final = str(home / "model_checkpoint" / "tiny")
    assert mat.metadata["train_spec"].value["output_dir"] == final
    assert json.loads((home / "model_checkpoint" / "tiny" / "train_spec.json").read_text())["output_dir"] == final
    assert ".tmp-" not in json.dumps({k: str(v.value) for k, v in mat.metadata.items() if k != "loss_curve"})


def test_a_failing_rank_fails_the_asset_with_its_own_error(home: Path) -> None:
    result = _train(home, launcher=JobLauncher(num_processes=2), debug={"fail_on_rank": 1})
    assert not result.success
    failure = result.failure_data_for_node("model_checkpoint")
    message = failure.user_failure_data.description if failure.user_failure_data else str(failure.error)
    assert "rank 1/2" in message and "injected fault" in message
    assert not (home / "model_checkpoint" / "tiny").exists()  # nothing half-written at the final path
    assert not _job_processes(str(home))



def test_a_run_that_cannot_fit_is_refused_before_anything_is_launched(home: Path) -> None:
    # Plan for a device with 1.52 GiB, 0.02 GiB beyond the reserve: tiny's fp32 AdamW state (~0.06 GiB) does not fit.
    result = _train(home, launcher=JobLauncher(), plan_device_memory_gib=1.52)
    assert not result.success
    failure = result.failure_data_for_node("model_checkpoint")
    message = failure.user_failure_data.description if failure.user_failure_data else str(failure.error)
    assert message.startswith("model_checkpoint[tiny]: tiny on 1 x 1.52 GiB: needs ~"), message
    assert "(1.52 GiB there)" in message
    assert not list((home / "runs" / "model_checkpoint").glob("tiny/*/spec.json"))  # nothing was launched


def _wait_for(predicate, *, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_killed_sharded_training_resumes_from_its_sharded_checkpoint_through_the_retry(home: Path,
                                                                                      tmp_path: Path) -> None:
    """FSDP2 on 2 ranks; SIGKILL the job's process group after the first (sharded) checkpoint:
    Dagster's retry resumes from it and ends at the planned step. (DDP: test_reliability_kill.)"""
    # 18 steps after checkpoint-6 leave seconds to catch the job running; evaluation only at the end.
    config = only(fast_run_config(max_steps=24, save_steps=6), "model_checkpoint")
    config["ops"]["model_checkpoint"]["config"].update(num_processes=2, strategy="fsdp_full", eval_steps=24)
    cli = start_materialize(exp1_home=home, tmp_path=tmp_path, select="model_checkpoint", config=config)
    runs = home / "runs" / "model_checkpoint" / "tiny"
    _wait_for(lambda: any(runs.glob("*/checkpoint-6/checkpoint_manifest.json")), timeout=300, what="checkpoint-6")
    assert len(list(runs.glob("*/checkpoint-6/pytorch_model_fsdp_0/*.distcp"))) == 2  # one shard per rank
    spec = next(runs.glob("*/spec.json"))
    pids = _job_processes(str(spec))
    agent = [p for p in pids if b"accelerate" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert agent and len(pids) == 3, "the launcher and its two ranks should be running"
    # SIGKILL the launcher's process group, as the OOM killer would. torchrun starts each rank in
    # a session of its own, so only the parent-death signal (runtime.die_with_parent) takes the
    # ranks along; orphans would train on into the run dir the retry resumes from.
    os.killpg(os.getpgid(agent[0]), signal.SIGKILL)
    _wait_for(lambda: not _job_processes(str(spec)), timeout=30, what="the orphaned ranks to die with their agent")
    out, _ = cli.communicate(timeout=600)
    assert cli.returncode == 0, out.decode(errors="replace")[-3000:]
    trained = json.loads((home / "model_checkpoint" / "tiny" / "train_result.json").read_text())
    assert trained["resumed_from_step"] is not None and 6 <= trained["resumed_from_step"] < 24
    assert trained["steps"] == 24 and trained["strategy"] == "fsdp_full" and trained["world_size"] == 2


def test_cancelling_the_run_leaves_no_process(home: Path, tmp_path: Path) -> None:
    config = only(fast_run_config(max_steps=400, save_steps=200), "model_checkpoint")
    cli = start_materialize(exp1_home=home, tmp_path=tmp_path, select="model_checkpoint", config=config)
    runs = home / "runs" / "model_checkpoint" / "tiny"
    # Progress lines travel through the Pipes message file: wait until training really runs.
    _wait_for(lambda: any("step 2/" in p.read_text(errors="replace") for p in runs.glob("*/pipes-*.jsonl")),
              timeout=300, what="training progress")
    spec = next(runs.glob("*/spec.json"))
    assert _job_processes(str(spec))
    cli.send_signal(signal.SIGINT)  # Ctrl-C on the CLI = terminating the run
    cli.communicate(timeout=120)
    assert cli.returncode != 0
    _wait_for(lambda: not _job_processes(str(spec)), timeout=30, what="the job's processes to exit")
    assert not (home / "model_checkpoint" / "tiny").exists()
