"""The launch package's failure analysis and error types, without launching anything."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from dagster import Failure, MetadataValue

from exp1_assets.defs.launcher import JobLauncher, launch_failure
from exp1_assets.launch.errors import (
    BackendUnavailable, JobFailed, JobPreempted, JobStalled, LaunchError, SubmitFailed,
)
from exp1_assets.launch.follow import follow, job_failure
from exp1_assets.launch.slurm import SlurmJob
from exp1_assets.runtime import PREEMPTED_EXIT_CODE

ECHO = "rank 0/2: RuntimeError: [../third_party/gloo/transport/tcp/pair.cc:534] Connection closed by peer\n"


class FakeJob:
    """A JobHandle whose exit code arrives after `polls_before_exit` polls (None: never)."""

    def __init__(self, *, code: int | None = 0, polls_before_exit: int = 0, tail: str = "last line\n",
                 last_output: float | None = None) -> None:
        self.code, self.polls_left, self.tail = code, polls_before_exit, tail
        self.last_output = time.time() if last_output is None else last_output
        self.cancels = 0

    def poll(self) -> int | None:
        if self.code is None or self.polls_left > 0:
            self.polls_left -= 1
            return None
        return self.code

    def cancel(self) -> None:
        self.cancels += 1

    def describe(self) -> str:
        return "fake job"

    def log_tail(self) -> str:
        return self.tail

    def last_output_time(self) -> float:
        return self.last_output


def _rank_error(run_dir: Path, rank: int, text: str, *, age_s: float) -> None:
    path = run_dir / "errors" / f"rank{rank}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_the_root_cause_is_the_rank_that_did_not_fail_in_a_collective(tmp_path: Path) -> None:
    # rank 0's echo is older than rank 1's real error: the real error still comes first.
    _rank_error(tmp_path, 0, ECHO, age_s=10)
    _rank_error(tmp_path, 1, "rank 1/2: RuntimeError: injected fault\n\nTraceback ...", age_s=5)
    failure = job_failure(job=FakeJob(), code=1, run_dir=tmp_path)
    assert failure.description.startswith("fake job failed (exit code 1) — rank 1/2: RuntimeError: injected fault")
    assert failure.failed_ranks == ("rank1", "rank0")
    assert failure.metadata == {"exit_code": 1, "failed_ranks": "rank1, rank0", "log_tail": "last line\n"}
    assert failure.retryable is True


def test_among_real_errors_the_first_to_fail_is_the_root_cause(tmp_path: Path) -> None:
    _rank_error(tmp_path, 3, "rank 3/4: RuntimeError: CUDA out of memory\n", age_s=20)
    _rank_error(tmp_path, 1, "rank 1/4: RuntimeError: later\n", age_s=10)
    assert job_failure(job=FakeJob(), code=1, run_dir=tmp_path).failed_ranks == ("rank3", "rank1")


@pytest.mark.parametrize("error, retryable", [
    ("ValueError", False), ("TypeError", False), ("KeyError", False), ("FileNotFoundError", False),
    ("NotImplementedError", False), ("RuntimeError", True), ("OSError", True),
])
def test_a_rank_that_rejected_its_input_is_not_retried_a_crash_is(tmp_path: Path, error: str, retryable: bool) -> None:
    _rank_error(tmp_path, 0, f"rank 0/1: {error}: something\n", age_s=1)
    assert job_failure(job=FakeJob(), code=1, run_dir=tmp_path).retryable is retryable


def test_without_error_files_the_log_tail_is_the_description_and_a_retry_may_help(tmp_path: Path) -> None:
    failure = job_failure(job=FakeJob(tail="Killed\n"), code=137, run_dir=tmp_path)
    assert failure.description == "fake job failed (exit code 137); last output:\nKilled\n"
    assert failure.metadata["failed_ranks"] == "unknown" and failure.exit_code == 137
    assert failure.retryable is True


def test_the_preempted_exit_code_is_a_retryable_preemption_not_a_failure(tmp_path: Path) -> None:
    # A deterministic error file from an earlier run of a requeued job must not veto the resume.
    _rank_error(tmp_path, 1, "rank 1/2: ValueError: from an earlier run\n", age_s=60)
    preempted = job_failure(job=FakeJob(tail="exp1: job 7 stopped at step 40\n"), code=PREEMPTED_EXIT_CODE,
                            run_dir=tmp_path)
    assert isinstance(preempted, JobPreempted) and preempted.retryable is True
    assert preempted.description == (
        "fake job stopped at a checkpoint when warned of its time limit or of preemption "
        "(exit code 75: preempted, resume me); the next attempt resumes from that checkpoint")
    assert preempted.metadata == {"exit_code": 75, "log_tail": "exp1: job 7 stopped at step 40\n"}
    failure = launch_failure(preempted)
    assert failure.allow_retries is True and failure.metadata["exit_code"] == MetadataValue.int(75)
    # Any other exit code is still judged by the error files.
    assert job_failure(job=FakeJob(), code=1, run_dir=tmp_path).retryable is False


def test_follow_raises_job_preempted_for_a_job_that_exited_75(tmp_path: Path) -> None:
    job = FakeJob(code=PREEMPTED_EXIT_CODE, polls_before_exit=2)
    with pytest.raises(JobPreempted) as caught:
        follow(job, messages=tmp_path / "m.jsonl", run_dir=tmp_path, stall_timeout_s=None, poll_interval_s=0.001)
    assert caught.value.exit_code == 75 and job.cancels == 0


def test_follow_returns_on_success_and_raises_job_failed_on_a_non_zero_exit(tmp_path: Path) -> None:
    ok = FakeJob(code=0, polls_before_exit=2)
    follow(ok, messages=tmp_path / "m.jsonl", run_dir=tmp_path, stall_timeout_s=None, poll_interval_s=0.001)
    assert ok.cancels == 0
    with pytest.raises(JobFailed) as caught:
        follow(FakeJob(code=3), messages=tmp_path / "m.jsonl", run_dir=tmp_path, stall_timeout_s=None,
               poll_interval_s=0.001)
    assert caught.value.exit_code == 3


def test_a_stalled_job_is_cancelled_once_and_reported_as_retryable(tmp_path: Path) -> None:
    job = FakeJob(code=None, last_output=time.time() - 100, tail="step 3/400\n")
    with pytest.raises(JobStalled) as caught:
        follow(job, messages=tmp_path / "m.jsonl", run_dir=tmp_path, stall_timeout_s=5, poll_interval_s=0.001)
    assert job.cancels == 1
    assert "fake job made no progress for 100 s (stall_timeout_s=5); it was stopped" == str(caught.value)
    assert caught.value.retryable is True and caught.value.metadata == {"log_tail": "step 3/400\n"}


def test_recent_pipes_messages_count_as_progress(tmp_path: Path) -> None:
    messages = tmp_path / "m.jsonl"
    messages.write_text("{}\n")  # written just now
    job = FakeJob(code=0, polls_before_exit=3, last_output=time.time() - 100)
    follow(job, messages=messages, run_dir=tmp_path, stall_timeout_s=5, poll_interval_s=0.001)
    assert job.cancels == 0


def test_an_interrupted_follow_cancels_the_job_and_reraises(tmp_path: Path) -> None:
    class Interrupted(FakeJob):
        def poll(self) -> int | None:
            raise KeyboardInterrupt  # SIGINT to the CLI, or the run terminated from the UI

    job = Interrupted()
    with pytest.raises(KeyboardInterrupt):
        follow(job, messages=tmp_path / "m.jsonl", run_dir=tmp_path, stall_timeout_s=None, poll_interval_s=0.001)
    assert job.cancels == 1


def test_a_zero_stall_timeout_is_rejected_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^stall_timeout_s: 0 must be positive"):
        follow(FakeJob(), messages=tmp_path / "m", run_dir=tmp_path, stall_timeout_s=0, poll_interval_s=0.001)


def test_the_converted_failure_keeps_description_metadata_and_retry_decision(tmp_path: Path) -> None:
    _rank_error(tmp_path, 1, "rank 1/2: ValueError: max_steps must be positive\n", age_s=1)
    failure = launch_failure(job_failure(job=FakeJob(tail="a ``` b"), code=1, run_dir=tmp_path))
    assert isinstance(failure, Failure) and failure.allow_retries is False
    assert "rank 1/2: ValueError: max_steps must be positive" in failure.description
    assert failure.metadata["exit_code"] == MetadataValue.int(1)
    assert failure.metadata["failed_ranks"] == MetadataValue.text("rank1")
    assert failure.metadata["log_tail"] == MetadataValue.md("```\na ''' b\n```")
    assert launch_failure(JobStalled("stalled", idle_s=9.0, log_tail="")).allow_retries is True


@pytest.mark.parametrize("error", [SubmitFailed("sbatch: error: invalid partition"), BackendUnavailable("sbatch not found")])
def test_submit_and_backend_errors_are_never_retried(error: LaunchError) -> None:
    assert error.retryable is False
    failure = launch_failure(error)
    assert failure.allow_retries is False and failure.description == str(error) and failure.metadata == {}


def test_an_unknown_backend_is_refused_by_the_config_before_anything_runs(tmp_path: Path) -> None:
    """A closed choice: the run config is rejected (Dagster validates it before the run starts)."""
    with pytest.raises(ValueError, match="backend"):
        JobLauncher(backend="kubernetes")
    assert not any(tmp_path.iterdir())


def test_an_sbatch_rejection_is_a_submit_failure(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: Invalid partition name specified' >&2\nexit 1\n")
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    with pytest.raises(SubmitFailed) as caught:
        SlurmJob.submit(script_path=tmp_path / "job.sbatch", log_path_template=str(tmp_path / "l-%j"), env=env)
    assert str(caught.value) == (f"sbatch {tmp_path / 'job.sbatch'} failed (exit 1): "
                                 "sbatch: error: Invalid partition name specified")
    assert caught.value.retryable is False


def test_an_empty_description_is_rejected() -> None:
    with pytest.raises(ValueError, match="^SubmitFailed: description must not be empty"):
        SubmitFailed(" ")
