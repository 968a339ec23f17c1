"""The Slurm backend's job handle: a submitted batch job, followed until it is over.

The launcher writes the script that `launch/sbatch.py` renders, submits it with `sbatch --parsable`
where the Slurm client commands work (no SSH layer), and follows the job through `SlurmJob`, which
implements the same `JobHandle` protocol (`follow.py`) as a local process group. A job that
requeues itself at the time-limit warning (`sbatch.py`) goes from RUNNING back to PENDING and runs
again under the same id: `SlurmJob` follows it as one job.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import time
from pathlib import Path

from exp1_assets.launch.errors import BackendUnavailable, SchedulerUnreachable, SubmitFailed

# Job states in which the job (or its cleanup) is still going on; anything else is final.
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
    "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
})
# Active states in which the job waits (for resources, or to run again after a requeue): silence
# then is not a stall, and a job seen RUNNING before that was requeued.
WAITING_STATES = frozenset({
    "PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SUSPENDED", "RESV_DEL_HOLD",
})
_COMMAND_TIMEOUT_S = 60.0


class SlurmJob:
    """A submitted batch job, followed with `squeue` / `scontrol show job` (no accounting needed)."""

    def __init__(self, job_id: str, log_path: Path) -> None:
        self.job_id = job_id
        self.log_path = log_path
        self.state = "SUBMITTED"
        self.exit_code = ""
        self._log_offset = 0
        self._tail: collections.deque[str] = collections.deque(maxlen=200)
        self._query_failures = 0
        self._has_run = False
        self._last_waiting = 0.0  # when the job was last seen waiting (queued, requeued)

    @classmethod
    def submit(cls, *, script_path: Path, log_path_template: str, env: dict[str, str]) -> "SlurmJob":
        """`sbatch --parsable script`; the environment `env` is exported into the job."""
        out = _slurm(["sbatch", "--parsable", str(script_path)], env=env)
        if out.returncode != 0:
            raise SubmitFailed(f"sbatch {script_path} failed (exit {out.returncode}): {out.stderr.strip()}")
        job_id = out.stdout.strip().split(";")[0]  # "<id>" or "<id>;<cluster>"
        if not job_id.isdigit():
            raise SubmitFailed(f"sbatch {script_path} printed no job id: {out.stdout!r}")
        return cls(job_id, Path(log_path_template.replace("%j", job_id)))

    def poll(self) -> int | None:
        """None while the job is queued, running or cleaning up; then its exit code (0 = COMPLETED)."""
        self._pump_log()
        queued = _slurm(["squeue", "-h", "-j", self.job_id, "-o", "%T %r"])
        state, _, reason = queued.stdout.strip().partition(" ")
        if queued.returncode == 0 and state in ACTIVE_STATES:
            self._observe(state, reason)
            return None
        shown = _slurm(["scontrol", "show", "job", "-o", self.job_id])
        if shown.returncode != 0:
            if "Invalid job id" in shown.stderr:  # purged after MinJobAge: the outcome is lost
                self.state = "UNKNOWN (purged from slurmctld)"
                return 1
            return self._transient(shown.stderr)
        fields = dict(re.findall(r"(\w+)=(\S*)", shown.stdout))
        self._observe(fields.get("JobState", "UNKNOWN"), fields.get("Reason", ""))
        self.exit_code = fields.get("ExitCode", "")
        if self.state in ACTIVE_STATES:
            return None
        self._pump_log()  # the last lines (a traceback) before the launcher reports
        return _exit_status(self.state, self.exit_code)

    def _observe(self, state: str, reason: str) -> None:
        """Record the job's state; a job that ran and waits again was requeued (same id, same log)."""
        if state in WAITING_STATES:
            self._last_waiting = time.time()
            if self._has_run and state != self.state:
                print(f"exp1: Slurm job {self.job_id} was requeued ({state}, {reason or 'no reason given'}); "
                      "it resumes from its latest checkpoint when it runs again", file=sys.stderr)
        elif state == "RUNNING":
            self._has_run = True
        self.state = state

    def _transient(self, error: str) -> int | None:
        """slurmctld busy or restarting: keep polling, but not forever."""
        self._query_failures += 1
        if self._query_failures > 100:
            raise SchedulerUnreachable(f"cannot query Slurm job {self.job_id}: {error.strip()}")
        return None

    def cancel(self, *, timeout_s: float = 120.0) -> None:
        """`scancel` the job and wait until it has left `squeue` (its processes are gone)."""
        _slurm(["scancel", self.job_id])
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            queued = _slurm(["squeue", "-h", "-j", self.job_id, "-o", "%T"])
            if queued.returncode == 0 and not queued.stdout.strip():
                break
            if queued.returncode != 0 and "Invalid job id" in queued.stderr:
                break
            time.sleep(0.5)
        else:
            print(f"Slurm job {self.job_id} still in squeue {timeout_s:.0f} s after scancel", file=sys.stderr)
        self.state = "CANCELLED"
        self._pump_log()

    def describe(self) -> str:
        detail = ", ".join(x for x in (self.state, f"ExitCode={self.exit_code}" if self.exit_code else "") if x)
        return f"Slurm job {self.job_id} ({detail})"

    def log_tail(self) -> str:
        return "".join(self._tail)

    def last_output_time(self) -> float:
        if self.state in WAITING_STATES:  # waiting in the queue, or to run again, is not a stall
            return time.time()
        try:
            written = self.log_path.stat().st_mtime
        except FileNotFoundError:
            written = 0.0
        # A requeued job's log is as old as its last run: count its silence from when it started again.
        return max(written, self._last_waiting)

    def _pump_log(self) -> None:
        """Copy new lines of the job's log to stderr (the step's compute logs) and the tail."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                chunk = log.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1  # whole lines only; the rest comes with the next poll
        self._log_offset += end
        for raw in chunk[:end].splitlines(keepends=True):
            line = raw.decode(errors="replace")
            self._tail.append(line)
            sys.stderr.write(line)


def _exit_status(state: str, exit_code: str) -> int:
    """A shell-style status from Slurm's `ExitCode=<code>:<signal>`, never 0 unless COMPLETED.

    >>> _exit_status("COMPLETED", "0:0"), _exit_status("FAILED", "1:0"), _exit_status("CANCELLED", "0:15")
    (0, 1, 143)
    >>> _exit_status("TIMEOUT", "0:0")
    1
    """
    if state == "COMPLETED":
        return 0
    code, _, signal = exit_code.partition(":")
    if code.isdigit() and int(code):
        return int(code)
    if signal.isdigit() and int(signal):
        return 128 + int(signal)
    return 1


def _slurm(cmd: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, returncode=124, stdout="", stderr=f"{cmd[0]} timed out")
    except FileNotFoundError:
        raise BackendUnavailable(f"{cmd[0]} not found: the slurm backend needs the Slurm client commands") from None
