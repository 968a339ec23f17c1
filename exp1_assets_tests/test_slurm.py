"""The Slurm backend on a real (throw-away, 2-node) Slurm cluster: train, fail, cancel, resume.

The cluster comes from the `slurm_cluster` session fixture (`scripts/slurm_cluster.sh`); both
"nodes" are slurmd daemons on this machine sharing its filesystem, so `tmp_path` is "shared".
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from exp1_assets.defs.launcher import JobLauncher
from exp1_assets.launch.slurm import SbatchRequest, render_sbatch
from exp1_assets.defs.store import ArtifactStore
from exp1_assets_tests.cli_run import start_materialize
from exp1_assets_tests.run_configs import fast_run_config, only
from exp1_assets_tests.slurm_cluster import slurm_cluster  # noqa: F401 - the session fixture
from exp1_assets_tests.test_graph import _assets
from exp1_assets_tests.test_launcher import data_home  # noqa: F401 - the module's data, trained per test

pytestmark = pytest.mark.slurm
EXPECTED = Path(__file__).parent / "expected"
JOB_ENV = {"OMP_NUM_THREADS": "1"}  # two "nodes" share 2 cores


def slurm_launcher(**overrides) -> JobLauncher:
    settings = dict(backend="slurm", nodes=2, poll_interval_s=0.5, extra_env=dict(JOB_ENV))
    settings.update(overrides)
    return JobLauncher(**settings)


# ---- the sbatch script (no cluster needed) -------------------------------------------------------

def _launcher_2x8_bf16() -> JobLauncher:
    return JobLauncher(
        backend="slurm", nodes=2, gpus_per_node=8, cpus_per_task=64, partition="gpu", account="exp1",
        time_limit="2-00:00:00", mixed_precision="bf16", python="python",
        extra_sbatch_lines=["--mem=0", "#SBATCH --exclusive"],
        setup_script="module load cuda/12.4\nsource /shared/venvs/exp1/bin/activate",
        extra_env={"WANDB_API_KEY": "s3cret-key"},
    )


def test_sbatch_script_for_2x8_gpus_bf16_matches_the_reviewed_expectation(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "model_checkpoint" / "1B" / "0123abcd"
    request = _launcher_2x8_bf16().sbatch_request(
        job_name="exp1-train-1B", module="exp1_assets.training.train", spec_path=run_dir / "spec.json",
        log_path=run_dir / "slurm-tag-%j.log")
    script = render_sbatch(request).replace(str(tmp_path), "/shared/exp1")
    assert script == (EXPECTED / "sbatch_2x8_bf16.sh").read_text()
    assert "s3cret-key" not in script and "DAGSTER_PIPES" not in script  # env travels via --export
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_cpu_nodes_run_one_process_each_and_single_node_is_not_multi_gpu() -> None:
    def node_command(**settings) -> str:
        request = SbatchRequest(job_name="j", module="m", spec_path="/s.json", log_path="/l-%j", **settings)
        return render_sbatch(request).split("bash -c ", 1)[1]

    assert "--num_processes 2 " in node_command(nodes=2) and "--multi_gpu" in node_command(nodes=2)
    single = node_command(nodes=1)
    assert "--num_processes 1 " in single and "--multi_gpu" not in single and "rdzv" not in single


@pytest.mark.parametrize("field, value", [
    ("nodes", 0), ("time_limit", "two days"), ("extra_sbatch_lines", ("mem=0",)),
    ("extra_sbatch_lines", ("--mem=0\nrm -rf /",)), ("python", " "),
])
def test_sbatch_request_validation_names_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        SbatchRequest(**{"job_name": "j", "module": "m", "spec_path": "/s", "log_path": "/l", field: value})


# ---- on the cluster ------------------------------------------------------------------------------

@pytest.fixture
def home(data_home: Path, tmp_path: Path, slurm_cluster: dict[str, str]) -> Path:
    copy = tmp_path / "exp1_home"
    shutil.copytree(data_home, copy)
    return copy


def _train_config(**overrides) -> dict:
    config = only(fast_run_config(), "model_checkpoint")
    config["ops"]["model_checkpoint"]["config"].update(overrides)
    return config


def _train(home: Path, launcher: JobLauncher, **overrides):
    with DagsterInstance.ephemeral() as instance:
        return materialize(_assets("model_checkpoint"), instance=instance, partition_key="tiny",
                           run_config=_train_config(**overrides), raise_on_error=False,
                           resources={"store": ArtifactStore(root=str(home)), "launcher": launcher})


def _runs(home: Path) -> Path:
    return home / "runs" / "model_checkpoint" / "tiny"


def _job_ids(home: Path) -> list[str]:
    """Ids of the jobs submitted for this home, from their log files `slurm-<tag>-<id>.log`."""
    return [re.fullmatch(r"slurm-\w+-(\d+)\.log", p.name).group(1) for p in _runs(home).glob("*/slurm-*-*.log")]


def _in_squeue(job_id: str) -> bool:
    return bool(subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip())


def _job_processes(marker: str) -> list[int]:
    """Live PIDs whose command line mentions `marker` (a run's spec path)."""
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


def _wait_for(predicate, *, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_two_nodes_train_through_slurm_then_the_checkpoint_evaluates(home: Path) -> None:
    result = _train(home, slurm_launcher())
    assert result.success
    checkpoint = home / "model_checkpoint" / "tiny"
    trained = json.loads((checkpoint / "train_result.json").read_text())
    assert trained["world_size"] == 2 and trained["steps"] == 12  # a rank on each node
    assert trained["val_loss_after"] < trained["val_loss_before"]

    metadata = result.asset_materializations_for_node("model_checkpoint")[0].metadata
    assert {"param_count", "tokens_per_s", "loss_curve"} <= set(metadata)  # through Pipes, from rank 0
    job_id = metadata["slurm_job_id"].value
    assert [job_id] == _job_ids(home) and not _in_squeue(job_id)
    assert "#SBATCH --nodes=2" in metadata["sbatch_script"].value
    log = next(_runs(home).glob(f"*/slurm-*-{job_id}.log")).read_text()
    assert "rendezvous n1:" in log  # node names resolve inside the job

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert sum(p.numel() for p in model.parameters()) == metadata["param_count"].value

    config = only(fast_run_config(), "evaluation_report")
    with DagsterInstance.ephemeral() as instance:
        evaluated = materialize(_assets("evaluation_report"), instance=instance, partition_key="tiny",
                                run_config=config, resources={"store": ArtifactStore(root=str(home)),
                                                              "launcher": JobLauncher()})
    assert evaluated.success
    assert (home / "evaluation_report" / "tiny" / "report.json").exists()


def test_a_rank_failing_on_the_second_node_fails_the_asset_with_its_error(home: Path) -> None:
    result = _train(home, slurm_launcher(), debug={"fail_on_rank": 1})
    assert not result.success
    failure = result.failure_data_for_node("model_checkpoint")
    message = failure.user_failure_data.description if failure.user_failure_data else str(failure.error)
    assert re.search(r"Slurm job \d+ \(FAILED, ExitCode=\d+:\d+\)", message), message
    assert "rank 1/2" in message and "injected fault" in message
    assert not (home / "model_checkpoint" / "tiny").exists()
    assert not [j for j in _job_ids(home) if _in_squeue(j)]


def _complete(checkpoint: Path) -> bool:
    """Manifest written and the weights on disk: a checkpoint the retry can resume from.

    The weights are checked too: a checkpoint whose manifest was written before (without) its
    model.safetensors has been seen here, and Trainer cannot resume from it (see the report).
    """
    from exp1_assets.training.integrity import verify_checkpoint

    return ((checkpoint / "checkpoint_manifest.json").is_file() and (checkpoint / "model.safetensors").is_file()
            and verify_checkpoint(checkpoint) is None)


def test_a_job_killed_by_slurm_fails_the_attempt_and_the_retry_resumes(home: Path) -> None:
    """scancel from outside after the first checkpoint (preemption, a lost node): retry resumes."""
    cancelled: list[str] = []

    def scancel_after_first_checkpoint() -> None:
        _wait_for(lambda: any(_complete(ck) for ck in _runs(home).glob("*/checkpoint-6")), timeout=300,
                  what="a complete checkpoint-6")
        cancelled.extend(_job_ids(home))
        subprocess.run(["scancel", *cancelled], check=True)

    killer = threading.Thread(target=scancel_after_first_checkpoint, daemon=True)
    killer.start()
    result = _train(home, slurm_launcher(), max_steps=30, save_steps=6)
    killer.join(timeout=5)
    assert len(cancelled) == 1, "the first job should have been cancelled mid-run"
    failures = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert failures and f"Slurm job {cancelled[0]} (CANCELLED" in str(failures[0].event_specific_data)
    assert result.success, "the retry should resume and finish"
    trained = json.loads((home / "model_checkpoint" / "tiny" / "train_result.json").read_text())
    said = [e.message for e in result.all_events if e.message and ("checkpoint" in e.message or "training tiny" in e.message)]
    assert trained["resumed_from_step"] is not None and trained["resumed_from_step"] >= 6, said
    assert trained["steps"] == 30 and len(_job_ids(home)) == 2


DEFINITIONS = """
import json, os
from dagster import Definitions
import exp1_assets.definitions as project
from exp1_assets.defs.launcher import JobLauncher
from exp1_assets.defs.store import ArtifactStore

defs = Definitions(assets=project.defs.assets, resources={
    "store": ArtifactStore(), "launcher": JobLauncher(**json.loads(os.environ["EXP1_TEST_LAUNCHER"]))})
"""


def _cli(home: Path, tmp_path: Path, *, config: dict, launcher: dict) -> subprocess.Popen:
    """`dagster asset materialize` of model_checkpoint[tiny] with a Slurm launcher, like an operator would."""
    defs_file = tmp_path / "slurm_defs.py"
    defs_file.write_text(DEFINITIONS)
    return start_materialize(exp1_home=home, tmp_path=tmp_path, select="model_checkpoint", config=config,
                             defs_file=defs_file, extra_env={"EXP1_TEST_LAUNCHER": json.dumps(launcher)})


def test_cancelling_the_dagster_run_scancels_the_job_and_leaves_no_process(home: Path, tmp_path: Path) -> None:
    launcher = {"backend": "slurm", "nodes": 2, "poll_interval_s": 0.5, "extra_env": JOB_ENV}
    cli = _cli(home, tmp_path, config=_train_config(max_steps=400, save_steps=200), launcher=launcher)

    def progressing() -> bool:  # rank 0's progress lines, as Dagster receives them
        return any("step 2/" in p.read_text(errors="replace") for p in _runs(home).glob("*/pipes-*.jsonl"))

    try:
        _wait_for(lambda: progressing() or cli.poll() is not None, timeout=240, what="training progress")
        assert cli.poll() is None, cli.communicate()[0].decode(errors="replace")[-3000:]
        [job_id] = _job_ids(home)
        spec = str(next(_runs(home).glob("*/spec.json")))
        assert _in_squeue(job_id) and len(_job_processes(spec)) >= 2  # a launcher (+ rank) per node
        cli.send_signal(signal.SIGINT)  # Ctrl-C on the CLI = terminating the run
        out, _ = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode != 0, out.decode(errors="replace")[-2000:]
    assert not _in_squeue(job_id)  # JobHandle.cancel waited for it to leave the queue
    assert _job_ids(home) == [job_id], "no retry may start after the run was cancelled"
    _wait_for(lambda: not _job_processes(spec), timeout=15, what="the job's processes to exit")
    assert not (home / "model_checkpoint" / "tiny").exists()
