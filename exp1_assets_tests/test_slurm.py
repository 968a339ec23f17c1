"""The Slurm backend on a real (throw-away, 2-node) Slurm cluster: train, fail, cancel, resume.

The cluster comes from the `slurm_cluster` session fixture (`scripts/slurm_cluster.sh`); both
"nodes" are slurmd daemons on this machine sharing its filesystem, so `tmp_path` is "shared".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from exp1_assets.defs.launcher import JobLauncher
from exp1_assets.launch.sbatch import SbatchRequest, render_sbatch
from exp1_assets.defs.store import ArtifactStore
from exp1_assets_tests.cli_run import start_materialize
from exp1_assets_tests.run_configs import fast_run_config, only
from exp1_assets_tests.slurm_cluster import slurm_cluster  # noqa: F401 - the session fixture
from exp1_assets_tests.test_graph import _assets

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
        log_path=run_dir / "slurm-tag-%j.log", run_dir=run_dir)
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


# ---- preemption and time limits (no cluster needed) ----------------------------------------------

def _preemption_script(**settings) -> str:
    request = SbatchRequest(job_name="j", module="m", spec_path="/r/spec.json", log_path="/r/l-%j.log",
                            preempted_marker="/r/preempted.txt", **settings)
    return render_sbatch(request)


def test_the_sbatch_script_asks_for_the_warning_and_requeue_and_only_the_ranks_catch_it() -> None:
    default = _preemption_script(time_limit="2-00:00:00")
    assert "#SBATCH --signal=USR1@300\n" in default and "#SBATCH --requeue\n" in default  # step signal, not B:
    node = default.split("bash -c ", 1)[1]
    assert node.startswith("""'trap "" USR1; """)  # accelerate and torchrun's agent ignore it, exec keeps that
    assert 'scontrol requeue "$SLURM_JOB_ID" && exit 0\n' in default and "  exit 75\n" in default

    no_requeue = _preemption_script(requeue=False, warning_lead_s=120)
    assert "#SBATCH --signal=USR1@120\n" in no_requeue and "#SBATCH --no-requeue\n" in no_requeue
    assert "scontrol requeue" not in no_requeue and "  exit 75\n" in no_requeue

    unwarned = _preemption_script(warning_lead_s=None)
    assert "--signal" not in unwarned and "trap" not in unwarned and "PREEMPTED" not in unwarned
    assert "#SBATCH --requeue\n" in unwarned  # the cluster may still requeue it (preemption, a lost node)
    for script in (default, no_requeue, unwarned):
        assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_unset_launcher_fields_keep_the_librarys_warning_and_requeue(tmp_path: Path) -> None:
    def request(**settings) -> SbatchRequest:
        return JobLauncher(backend="slurm", **settings).sbatch_request(
            job_name="j", module="m", spec_path=tmp_path / "spec.json", log_path=tmp_path / "l-%j.log",
            run_dir=tmp_path)

    library = SbatchRequest(job_name="j", module="m", spec_path="/s", log_path="/l")
    unset = request()
    assert (unset.warning_lead_s, unset.requeue) == (library.warning_lead_s, library.requeue) == (300, True)
    assert unset.preempted_marker == str(tmp_path / "preempted.txt")
    chosen = request(warning_lead_s=90, requeue=False, time_limit="10")
    assert (chosen.warning_lead_s, chosen.requeue) == (90, False)


@pytest.mark.parametrize("settings, message", [
    ({"warning_lead_s": 0}, "warning_lead_s: 0 is not between 1 and 65535 seconds"),
    ({"warning_lead_s": 70000}, "warning_lead_s: 70000 is not between 1 and 65535 seconds"),
    ({"warning_lead_s": 300, "time_limit": "5"}, "warning_lead_s: 300 s is not shorter than time_limit '5' (300 s)"),
    ({"preempted_marker": " "}, "preempted_marker: must not be empty"),
])
def test_a_warning_that_cannot_come_before_the_time_limit_is_refused(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        SbatchRequest(job_name="j", module="m", spec_path="/s", log_path="/l", **settings)


FAKE_SRUN = """#!/bin/bash
# Stands in for the job step: what its ranks did is in $FAKE_STEP.
case "$FAKE_STEP" in
  stopped-at-warning) echo "stopped at step 7 (checkpoint-7) on SIGUSR1" > "$MARKER"; exit 1 ;;
  crashed) exit 3 ;;
  *) exit 0 ;;
esac
"""
FAKE_SCONTROL = """#!/bin/bash
case "$1 $2" in
  "show hostnames") echo n1 ;;
  "show node") echo "NodeName=n1 NodeAddr=127.0.0.1 State=IDLE" ;;
  requeue*) echo "$*" >> "$CALLS"; exit "${FAKE_REQUEUE_RC:-0}" ;;
esac
"""


@pytest.mark.parametrize("requeue, step, requeue_rc, exit_code, requeued", [
    (True, "stopped-at-warning", 0, 0, True),      # same job id, resumes when Slurm runs it again
    (True, "stopped-at-warning", 1, 75, True),     # requeue refused: the launcher's retry resumes it
    (False, "stopped-at-warning", 0, 75, False),
    (True, "crashed", 0, 3, False),                # a crash stays a crash, even with an earlier run's marker
    (True, "finished", 0, 0, False),
])
def test_after_a_stop_at_the_warning_the_script_requeues_the_job_or_exits_75(
        tmp_path: Path, requeue: bool, step: str, requeue_rc: int, exit_code: int, requeued: bool) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    marker, calls = tmp_path / "preempted.txt", tmp_path / "calls.txt"
    marker.write_text("an earlier run's marker\n")  # the script must not take it for this run's
    script = render_sbatch(SbatchRequest(
        job_name="j", module="m", spec_path=str(tmp_path / "spec.json"), log_path=str(tmp_path / "l-%j.log"),
        python=sys.executable, requeue=requeue, preempted_marker=str(marker)))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "42",
           "SLURM_JOB_NODELIST": "n1", "SLURM_NNODES": "1", "FAKE_STEP": step, "MARKER": str(marker),
           "CALLS": str(calls), "FAKE_REQUEUE_RC": str(requeue_rc)}
    ran = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == exit_code, ran.stderr
    assert (calls.read_text() if calls.exists() else "") == ("requeue 42\n" if requeued else "")
    if step == "stopped-at-warning":
        assert "exp1: job 42 stopped at step 7 (checkpoint-7) on SIGUSR1" in ran.stderr


def test_only_the_last_runs_closed_pipes_message_reaches_dagster() -> None:
    """A requeued job opens and closes Pipes once per run, in one message file."""
    from exp1_assets.defs.pipes_reader import _ClosedLast

    class Handler:
        def __init__(self) -> None:
            self.methods: list[str] = []

        def handle_message(self, message: dict) -> None:
            self.methods.append(message["method"])

        def report_pipes_framework_exception(self, origin: str, exc_info) -> None:
            self.methods.append(f"exception from {origin}")

    handler = Handler()
    held = _ClosedLast(handler)
    for method in ("opened", "log", "closed", "opened", "log", "report_asset_materialization", "closed"):
        held.handle_message({"method": method, "params": {}})
    assert handler.methods == ["opened", "log", "opened", "log", "report_asset_materialization"]
    held.release()
    assert handler.methods[-1] == "closed" and handler.methods.count("closed") == 1
    held.report_pipes_framework_exception("reader", None)  # everything else passes through
    assert handler.methods[-1] == "exception from reader"


def test_the_warning_signal_makes_the_trainer_save_and_stop_at_that_step_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import TrainerControl, TrainerState

    from exp1_assets.runtime import Reporter
    from exp1_assets.training import preemption

    monkeypatch.setattr(preemption, "_stopped_at_step", None)
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        callback = preemption.PreemptionCallback(run_dir=tmp_path, reporter=Reporter(None))
        control = TrainerControl()
        callback.on_step_end(None, TrainerState(global_step=4, max_steps=10), control)
        assert not (control.should_save or control.should_training_stop) and preemption.exit_code() == 0

        os.kill(os.getpid(), signal.SIGUSR1)  # what Slurm sends to every process of the step
        last = TrainerControl()
        callback.on_step_end(None, TrainerState(global_step=10, max_steps=10), last)
        assert last.should_save and not last.should_training_stop  # the last step: just finish
        callback.on_step_end(None, TrainerState(global_step=5, max_steps=10), control)
        assert control.should_save and control.should_training_stop and control.should_log
        assert callback.stopped_at_step == 5 and preemption.exit_code() == 75
        callback.leave()
        assert (tmp_path / "preempted.txt").read_text() == "stopped at step 5 (checkpoint-5) on SIGUSR1\n"
    finally:
        signal.signal(signal.SIGUSR1, previous)


# ---- on the cluster ------------------------------------------------------------------------------

@pytest.fixture
def home(data_home: Path, tmp_path: Path, slurm_cluster: dict[str, str], request: pytest.FixtureRequest) -> Path:
    if any(item.name == TIME_LIMIT_TEST for item in request.session.items):
        request.getfixturevalue("time_limited_run")  # its job starts with the first cluster test (see there)
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


def test_two_nodes_train_sharded_through_slurm_then_the_consolidated_checkpoint_evaluates(home: Path) -> None:
    result = _train(home, slurm_launcher(), strategy="fsdp_full")
    assert result.success
    checkpoint = home / "model_checkpoint" / "tiny"
    trained = json.loads((checkpoint / "train_result.json").read_text())
    assert trained["world_size"] == 2 and trained["steps"] == 12  # a rank on each node
    assert trained["strategy"] == "fsdp_full" and trained["val_loss_after"] < trained["val_loss_before"]
    # Each node's rank wrote its own shard of the resume point; the final model is one file.
    [resume_point] = _runs(home).glob("*/checkpoint-12")
    assert sorted(p.name for p in (resume_point / "pytorch_model_fsdp_0").glob("*.distcp")) == \
        ["__0_0.distcp", "__1_0.distcp"]
    assert [p.name for p in checkpoint.glob("*.safetensors")] == ["model.safetensors"]

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
    """Manifest written and the weights (whole, or FSDP's shards) on disk: a checkpoint the retry can resume from.

    The weights are checked too: a checkpoint whose manifest was written before (without) its
    model.safetensors has been seen here, and Trainer cannot resume from it (see the report).
    """
    from exp1_assets.training.integrity import verify_checkpoint

    weights = (checkpoint / "model.safetensors").is_file() or any((checkpoint / "pytorch_model_fsdp_0").glob("*.distcp"))
    return (checkpoint / "checkpoint_manifest.json").is_file() and weights and verify_checkpoint(checkpoint) is None


def test_a_sharded_job_killed_by_slurm_fails_the_attempt_and_the_retry_resumes(home: Path) -> None:
    """FSDP2 (ZeRO-2 like) over 2 nodes; scancel from outside after the first sharded checkpoint
    (a lost node, a preemption without warning): the retry resumes from it."""
    cancelled: list[str] = []

    def scancel_after_first_checkpoint() -> None:
        _wait_for(lambda: any(_complete(ck) for ck in _runs(home).glob("*/checkpoint-6")), timeout=300,
                  what="a complete checkpoint-6")
        cancelled.extend(_job_ids(home))
        subprocess.run(["scancel", *cancelled], check=True)

    killer = threading.Thread(target=scancel_after_first_checkpoint, daemon=True)
    killer.start()
    # 18 steps after checkpoint-6 leave seconds to scancel the job running; evaluation only at the end.
    result = _train(home, slurm_launcher(), max_steps=24, save_steps=6, eval_steps=24, strategy="fsdp_grad_op")
    killer.join(timeout=5)
    assert len(cancelled) == 1, "the first job should have been cancelled mid-run"
    failures = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert failures and f"Slurm job {cancelled[0]} (CANCELLED" in str(failures[0].event_specific_data)
    assert result.success, "the retry should resume and finish"
    trained = json.loads((home / "model_checkpoint" / "tiny" / "train_result.json").read_text())
    said = [e.message for e in result.all_events if e.message and ("checkpoint" in e.message or "training tiny" in e.message)]
    assert trained["resumed_from_step"] is not None and trained["resumed_from_step"] >= 6, said
    assert trained["steps"] == 24 and len(_job_ids(home)) == 2 and trained["strategy"] == "fsdp_grad_op"


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


# ---- time limits and preemption on the cluster -----------------------------------------------------

def _train_logged(home: Path, launcher: JobLauncher, **overrides) -> tuple[object, list[str]]:
    """`_train`, plus every message the run logged (rank 0's Pipes lines among them), oldest first."""
    with DagsterInstance.ephemeral() as instance:
        result = materialize(_assets("model_checkpoint"), instance=instance, partition_key="tiny",
                             run_config=_train_config(**overrides), raise_on_error=False,
                             resources={"store": ArtifactStore(root=str(home)), "launcher": launcher})
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return result, messages


def _runs_of_the_job(messages: list[str]) -> list[dict]:
    """Each run's (first attempt, or after a requeue or retry) resume step, logged steps and stop step."""
    runs: list[dict] = []
    for message in messages:
        if message.startswith("training tiny/"):
            resumed = re.search(r"resuming from checkpoint-(\d+)", message)
            runs.append({"resumed_from": int(resumed.group(1)) if resumed else None, "steps": [], "stopped_at": None})
        elif runs and (logged := re.match(r"step (\d+)/\d+ loss=", message)):
            runs[-1]["steps"].append(int(logged.group(1)))
        elif runs and (stopped := re.search(r"stopping at step (\d+)/", message)):
            runs[-1]["stopped_at"] = int(stopped.group(1))
    return runs


def _assert_each_run_resumed_where_the_last_one_stopped(runs: list[dict], *, max_steps: int) -> None:
    assert len(runs) >= 2 and runs[0]["resumed_from"] is None, runs
    for before, after in zip(runs, runs[1:]):
        # The checkpoint written at the signal, and not one step of it trained again.
        assert before["stopped_at"] is not None and after["resumed_from"] == before["stopped_at"], runs
        assert after["steps"] and min(after["steps"]) > before["stopped_at"], runs
    assert runs[-1]["stopped_at"] is None and runs[-1]["steps"][-1] == max_steps, runs


def _release_requeued_job(*, home: Path, done: threading.Event, time_limit: str) -> None:
    """Act as an operator on this home's requeued job: start it ~3 s after its requeue, with `time_limit`.

    Slurm holds a requeued job until its old credential expired (CredExpire + 1 s: EligibleTime
    121 s after the requeue, seen here), then starts it at its next scheduling pass. Starting it
    within the second of the requeue fails it at once ("Killing non-startable batch JobId=5: Job
    credential revoked" in slurmctld's log, FAILED 1:0; seen here), hence the 3 s. The longer limit
    lets this resumed run finish: another 1-minute run could be warned again, and how many runs the
    training then takes would depend on this machine's speed.
    """
    held_since: dict[str, float] = {}
    while not done.wait(0.5):
        for job_id in _job_ids(home):
            out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%r"], capture_output=True, text=True).stdout
            if out.strip() != "BeginTime":
                held_since.pop(job_id, None)
            elif time.time() - held_since.setdefault(job_id, time.time()) > 3:
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now", f"TimeLimit={time_limit}"],
                               capture_output=True)
                held_since.pop(job_id)


TIME_LIMIT_TEST = ("test_a_job_whose_time_limit_is_shorter_than_the_run_requeues_at_the_warning_and_ends_at_the_"
                   "planned_step")
# Training starts ~5-15 s into the run. Steps padded to >= 0.5 s: 130 steps (65 s) outlast a
# warning at 59 s on any machine, and a slow one is not slowed further. One row per step, so the
# ranks mostly sleep while the other cluster tests run: the whole job used 72 s of CPU here
# (its start-ups most of it), against 188 s with 300 steps of 4 rows padded to >= 0.2 s.
TIME_LIMITED_STEPS, TIME_LIMITED_STEP_S = 130, 0.5


def _time_limited_training(home: Path) -> tuple[object, list[str]]:
    """The time-limit test's run: a 1-minute limit, the warning asked for 1 s before it; the
    requeued job is released with 10 minutes (`_release_requeued_job`)."""
    launcher = slurm_launcher(time_limit="1", warning_lead_s=1)
    done = threading.Event()
    releaser = threading.Thread(target=_release_requeued_job, kwargs={"home": home, "done": done, "time_limit": "10"},
                                daemon=True)
    releaser.start()
    try:
        return _train_logged(home, launcher, max_steps=TIME_LIMITED_STEPS, save_steps=1000, eval_steps=1000,
                             per_device_batch=1, debug={"min_step_s": TIME_LIMITED_STEP_S})
    finally:
        done.set()
        releaser.join(timeout=5)


@pytest.fixture(scope="module")
def time_limited_run(data_home: Path, slurm_cluster: dict[str, str],  # noqa: F811
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Future]]:
    """The time-limit test's home and its run, started in a thread by the module's first cluster test.

    That run is mostly waiting on Slurm's clock (a warning 29-59 s in, a held requeue, padded
    steps), so it runs alongside the other cluster tests' jobs (each job takes one of a node's
    two CPUs) and its test only reads the outcome. No job outlives the module: leaving the pool
    waits for the run, and one that its test never waited for (-x, Ctrl-C) is scancelled.
    """
    home = tmp_path_factory.mktemp("time_limited") / "exp1_home"
    shutil.copytree(data_home, home)
    with ThreadPoolExecutor(max_workers=1) as pool:
        training = pool.submit(_time_limited_training, home)
        try:
            yield home, training
        finally:
            while not training.done():  # the retry's job too
                subprocess.run(["scancel", *_job_ids(home)], capture_output=True)
                time.sleep(1)


def test_a_job_whose_time_limit_is_shorter_than_the_run_requeues_at_the_warning_and_ends_at_the_planned_step(
        time_limited_run: tuple[Path, Future]) -> None:
    """A 1-minute time limit (the cluster's least) on a longer training: warned, it saves, stops,
    requeues itself and resumes from that checkpoint, as one job.

    The warning is asked for 1 s before the limit: Slurm sends it at the first tick of its 30 s
    timer from 31 s before the limit, i.e. 29-59 s into the run (the ranks' handlers are in place
    after ~5-15 s), and enforces the limit at the first tick from 60 s on, >= 30 s after the warning.
    """
    home, training = time_limited_run
    result, messages = training.result(timeout=900)
    max_steps = TIME_LIMITED_STEPS
    runs = _runs_of_the_job(messages)
    assert result.success, "\n".join(messages[-30:])
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"], "requeued, not retried"
    assert len(runs) == 2, f"the first run should have been warned before it finished: {runs}"
    _assert_each_run_resumed_where_the_last_one_stopped(runs, max_steps=max_steps)

    [job_id] = _job_ids(home)  # one job, requeued in place: same id, same log
    log = next(_runs(home).glob(f"*/slurm-*-{job_id}.log")).read_text()
    stop = runs[0]["stopped_at"]
    assert f"exp1: job {job_id} stopped at step {stop} (checkpoint-{stop}) on SIGUSR1; requeueing it" in log
    assert f"exp1: job {job_id} (restart 1)" in log and "TIME LIMIT" not in log
    assert "failed (exitcode: 75)" in log  # torchrun's agent outlived the SIGUSR1 and saw its rank stop
    checkpoint = next(_runs(home).glob(f"*/checkpoint-{stop}"))
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == stop
    assert _complete(checkpoint)

    trained = json.loads((home / "model_checkpoint" / "tiny" / "train_result.json").read_text())
    assert trained["steps"] == max_steps and trained["resumed_from_step"] == stop
    history = json.loads((home / "model_checkpoint" / "tiny" / "log_history.json").read_text())
    logged = [e["step"] for e in history if "loss" in e]
    assert logged == sorted(set(logged)) and logged[-1] == max_steps  # no step trained (and logged) twice
    assert stop in logged  # the loss up to the stop was logged into the checkpoint it resumed from


def _rank_pid(spec: str, rank: int) -> int | None:
    """The training process of global rank `rank` (not its launcher), from /proc."""
    for pid in _job_processes(spec):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"exp1_assets.training.train" in cmdline and b"accelerate.commands.launch" not in cmdline \
                and f"RANK={rank}".encode() in environ:
            return pid
    return None


def test_without_requeue_a_warned_job_exits_75_and_the_retry_resumes_from_its_checkpoint(home: Path) -> None:
    """Only rank 1 (on the second node) gets the signal; both stop at the same step; the retry resumes."""
    max_steps = 24  # signalled after step 6: 18 steps left to catch it running, the rest for the retry
    signalled: list[int] = []

    def signal_rank_1_after_some_progress() -> None:
        def progressed() -> bool:
            return any("step 6/" in p.read_text(errors="replace") for p in _runs(home).glob("*/pipes-*.jsonl"))

        _wait_for(progressed, timeout=240, what="training progress")
        spec = str(next(_runs(home).glob("*/spec.json")))
        pid = _rank_pid(spec, 1)
        assert pid is not None, "rank 1's process"
        os.kill(pid, signal.SIGUSR1)
        signalled.append(pid)

    signaller = threading.Thread(target=signal_rank_1_after_some_progress, daemon=True)
    signaller.start()
    result, messages = _train_logged(home, slurm_launcher(requeue=False), max_steps=max_steps, save_steps=1000,
                                     eval_steps=1000)
    signaller.join(timeout=5)
    assert signalled, "rank 1 should have been signalled mid-run"
    runs = _runs_of_the_job(messages)
    assert result.success, "\n".join(messages[-30:])
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 1 and "(exit code 75: preempted, resume me)" in str(retries[0].event_specific_data)
    assert len(runs) == 2, runs  # rank 0, never signalled, stopped with rank 1 (and it alone logs)
    _assert_each_run_resumed_where_the_last_one_stopped(runs, max_steps=max_steps)
    first, second = sorted(_job_ids(home), key=int)
    first_log = next(_runs(home).glob(f"*/slurm-*-{first}.log")).read_text()
    assert (f"exp1: job {first} stopped at step {runs[0]['stopped_at']} (checkpoint-{runs[0]['stopped_at']}) "
            "on SIGUSR1; exit 75 (preempted)") in first_log
    checkpoint = next(_runs(home).glob(f"*/checkpoint-{runs[0]['stopped_at']}"))
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    trained = json.loads((home / "model_checkpoint" / "tiny" / "train_result.json").read_text())
    assert trained["steps"] == max_steps and trained["resumed_from_step"] == runs[0]["stopped_at"]
