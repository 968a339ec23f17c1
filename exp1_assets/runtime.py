"""What a launched job (training, evaluation, sampling) needs to talk back to Dagster.

The jobs run under `accelerate launch` (locally or in a Slurm allocation), so several ranks
execute the same code. Only global rank 0 opens Dagster Pipes: two writers on one message channel
would interleave their JSON lines. Every rank that raises writes its traceback to
`<run_dir>/errors/rank<N>.txt`, so the launcher can put the real error (rank 1's, say) into the
Dagster failure instead of a bare "exit code 1".

This module imports only `dagster_pipes` (tiny, no dagster), never `dagster` itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


# A job that stopped at a complete checkpoint because its scheduler warned it (the time limit is
# near, or the cluster preempts it) exits with this code, meaning "preempted, resume me" rather than
# "failed": 75 is EX_TEMPFAIL in sysexits.h ("try again later"), distinct from Python's 1 and 2 and
# from the 128+N of a signal. `accelerate launch` turns every non-zero rank exit into 1, so the
# ranks also leave `preempted_marker(run_dir)`; the Slurm batch script reads it and then requeues
# the job or exits with this code itself (launch/sbatch.py), which `launch.follow.job_failure` classifies.
PREEMPTED_EXIT_CODE = 75
# The warning Slurm sends (`sbatch --signal=USR1@<s>`) and the ranks catch (training/preemption.py).
PREEMPTION_SIGNAL = "USR1"


def preempted_marker(run_dir: str | Path) -> Path:
    """The file rank 0 writes after such a stop, once the checkpoint is complete (one line: where it stopped)."""
    return Path(run_dir) / "preempted.txt"


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere).

    torchrun's agent starts every rank in a session of its own, so killing the job's process
    group (the OOM killer, `kill -9` of the launcher, a cancel that had to escalate) kills the
    agent and leaves the ranks running as orphans: seen here, they trained on into the same run
    directory as the retry and wrote their errors into it. With the parent-death signal the ranks
    go with their agent. Call it first thing in a job's `main`.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
        return  # not permitted here: the launcher's group kill remains the only guard
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def global_rank() -> int:
    """The process's global rank as torchrun/accelerate export it (0 when launched alone)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class Reporter:
    """Rank 0's line to Dagster; a silent stand-in on other ranks and outside Dagster.

    Every method is safe to call on any rank, so job code never branches on the rank itself.
    """

    def __init__(self, pipes: Any | None) -> None:
        self._pipes = pipes

    @property
    def active(self) -> bool:
        return self._pipes is not None

    def log(self, message: str) -> None:
        if self._pipes is not None:
            self._pipes.log.info(message)
        elif global_rank() == 0:
            # Outside Dagster (a plain `accelerate launch`), progress still goes somewhere visible.
            print(message, file=sys.stderr, flush=True)

    def warning(self, message: str) -> None:
        if self._pipes is not None:
            self._pipes.log.warning(message)
        elif global_rank() == 0:
            print(f"WARNING: {message}", file=sys.stderr, flush=True)

    def report_materialization(
        self, *, metadata: Mapping[str, Any], data_version: str | None = None
    ) -> None:
        if self._pipes is not None:
            self._pipes.report_asset_materialization(
                metadata=dict(metadata), data_version=data_version
            )

    def report_check(
        self, *, check_name: str, passed: bool, metadata: Mapping[str, Any] | None = None
    ) -> None:
        if self._pipes is not None:
            self._pipes.report_asset_check(
                check_name=check_name, passed=passed, metadata=dict(metadata or {})
            )


@contextlib.contextmanager
def open_reporter() -> Iterator[Reporter]:
    """Open Dagster Pipes on global rank 0 when this process was launched by Dagster."""
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    launched_by_dagster = PipesEnvVarParamsLoader().is_dagster_pipes_process()
    if global_rank() != 0 or not launched_by_dagster:
        yield Reporter(None)
        return
    with open_dagster_pipes() as pipes:
        yield Reporter(pipes)


def error_file(run_dir: str | Path, rank: int | None = None) -> Path:
    rank = global_rank() if rank is None else rank
    return Path(run_dir) / "errors" / f"rank{rank}.txt"


@contextlib.contextmanager
def record_errors(run_dir: str | Path) -> Iterator[None]:
    """Write this rank's traceback next to the run if the body raises, then re-raise."""
    try:
        yield
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised unchanged
        if not isinstance(exc, SystemExit) or exc.code not in (0, None):
            text = "".join(traceback.format_exception(exc))
            report = f"rank {global_rank()}/{world_size()}: {type(exc).__name__}: {exc}\n\n{text}"
            try:
                path = error_file(run_dir)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(report)
            except OSError:
                # The disk that just filled up cannot take the error file either: the job's
                # output (the launcher's log tail) still can.
                print(report, file=sys.stderr, flush=True)
        raise
