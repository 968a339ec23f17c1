"""Following a running job to its end, and what its failure really was.

Both backends (`local.LocalJob`, `slurm.SlurmJob`) implement `JobHandle`. `follow` waits for
the job and stops it on a stall or on any interruption (a run terminated from the UI, SIGINT to
the CLI): no orphaned ranks. A non-zero exit becomes `JobFailed` whose description is the root
cause: the first failing rank's own traceback (from `<run_dir>/errors/rank<N>.txt`), else the
tail of the job's log; the "preempted, resume me" exit code becomes `JobPreempted` (retryable).
A job that the scheduler requeues stays one job: its handle reports it as still running.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from exp1_assets.launch.errors import JobFailed, JobPreempted, JobStalled
from exp1_assets.runtime import PREEMPTED_EXIT_CODE

# A failing rank whose exception is one of these rejected its own input (spec, paths, config):
# it fails the same way every time, so a retry cannot help.
DETERMINISTIC_ERRORS = ("ValueError", "TypeError", "KeyError", "FileNotFoundError", "NotImplementedError")

# When one rank dies, its peers fail too, inside a collective ("connection closed by peer").
# Those are echoes: the root cause is the rank that failed otherwise, or else the first to fail.
_ECHO_MARKERS = ("remote worker crashing", "Connection closed by peer", "Connection reset by peer",
                 "NCCL communicator was aborted", "ProcessGroupGloo", "ProcessGroupNCCL")
_DESCRIPTION_CHARS = 4000


class JobHandle(Protocol):
    """A running job, whichever backend started it."""

    def poll(self) -> int | None: ...
    def cancel(self) -> None: ...
    def describe(self) -> str: ...
    def log_tail(self) -> str: ...
    def last_output_time(self) -> float: ...


def follow(
    job: JobHandle, *, messages: Path, run_dir: Path, stall_timeout_s: float | None, poll_interval_s: float
) -> None:
    """Wait for `job`; stop it on a stall or any BaseException; raise `job_failure` on a non-zero exit.

    Progress is the job's output or its Pipes message file (`messages`) changing; with
    `stall_timeout_s=None` a silent job is waited for forever.
    """
    if stall_timeout_s is not None and stall_timeout_s <= 0:
        raise ValueError(f"stall_timeout_s: {stall_timeout_s} must be positive (None turns it off)")
    try:
        while (code := job.poll()) is None:
            if stall_timeout_s is not None:
                idle = time.time() - max(job.last_output_time(), _mtime(messages))
                if idle > stall_timeout_s:
                    job.cancel()
                    raise JobStalled(
                        f"{job.describe()} made no progress for {idle:.0f} s "
                        f"(stall_timeout_s={stall_timeout_s:g}); it was stopped",
                        idle_s=idle, log_tail=job.log_tail(),
                    )
            time.sleep(poll_interval_s)
    except JobStalled:
        raise  # already stopped above
    except BaseException:
        # Run terminated from the UI, SIGINT to the CLI, a scheduler gone silent: no orphans.
        job.cancel()
        raise
    if code != 0:
        raise job_failure(job=job, code=code, run_dir=run_dir)


def job_failure(*, job: JobHandle, code: int, run_dir: Path) -> JobFailed | JobPreempted:
    """The real error: the root-cause rank's traceback, else the tail of the job's log.

    A job that exited with `PREEMPTED_EXIT_CODE` did not fail: it stopped at a complete checkpoint
    when warned (time limit, preemption), and the next attempt resumes from there. Checked first:
    error files left by an earlier run of a requeued job say nothing about this one.
    """
    if code == PREEMPTED_EXIT_CODE:
        return JobPreempted(
            f"{job.describe()} stopped at a checkpoint when warned of its time limit or of preemption "
            f"(exit code {code}: preempted, resume me); the next attempt resumes from that checkpoint",
            exit_code=code, log_tail=job.log_tail())
    rank_errors = sorted((run_dir / "errors").glob("rank*.txt"), key=root_cause_first)
    tail = job.log_tail()
    headline = ""
    if rank_errors:
        first = rank_errors[0].read_text(errors="replace")
        headline = first.splitlines()[0] if first else rank_errors[0].name
        description = f"{job.describe()} failed (exit code {code}) — {headline}\n\n{first[-_DESCRIPTION_CHARS:]}"
    else:
        description = f"{job.describe()} failed (exit code {code}); last output:\n{tail[-_DESCRIPTION_CHARS:]}"
    # A killed process (OOM killer, lost node, preemption) is worth a retry: it resumes from its
    # checkpoint. A job that rejected its own spec fails the same way every time: don't retry.
    return JobFailed(description, exit_code=code, failed_ranks=tuple(p.stem for p in rank_errors),
                     log_tail=tail, retryable=not is_deterministic(headline))


def is_deterministic(headline: str) -> bool:
    """Whether a rank error file's first line names an error that a retry repeats.

    The runtime writes `rank <r>/<n>: <ExceptionType>: <message>` as that line.

    >>> is_deterministic("rank 1/2: ValueError: max_steps must be positive")
    True
    >>> is_deterministic("rank 0/2: RuntimeError: CUDA out of memory"), is_deterministic("")
    (False, False)
    """
    return any(f": {name}:" in headline for name in DETERMINISTIC_ERRORS)


def root_cause_first(path: Path) -> tuple[bool, float, int]:
    """Sort key for rank error files: real failures before collective echoes, then oldest, then rank."""
    text = path.read_text(errors="replace")[:_DESCRIPTION_CHARS]
    return (any(marker in text for marker in _ECHO_MARKERS), path.stat().st_mtime, int(path.stem[4:]))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
