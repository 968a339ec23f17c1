"""Running job processes: the `accelerate launch` arguments and a local process-group handle.

Kept free of Dagster types so the Slurm backend can share the same handle interface.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Protocol


class JobHandle(Protocol):
    def poll(self) -> int | None: ...
    def cancel(self) -> None: ...
    def describe(self) -> str: ...
    def log_tail(self) -> str: ...
    def last_output_time(self) -> float: ...


def accelerate_args(
    *,
    num_processes: int,
    num_machines: int,
    machine_rank: str,
    main_process_ip: str,
    main_process_port: str,
    mixed_precision: str = "no",
    config_file: str = "",
    cpu_threads_per_process: int | str | None = None,
) -> list[str]:
    """`accelerate launch` flags for `num_machines` x (num_processes / num_machines) ranks.

    On a CPU-only machine two ranks need `--multi_gpu` (falls back to gloo); `--cpu
    --num_processes 2` silently starts a single process. Without `--num_cpu_threads_per_process`
    accelerate sets OMP_NUM_THREADS=1 for every rank: one rank on a 2-core machine then trained
    on one core (found in the end-to-end benchmark), so the caller passes the cores per rank.
    """
    args = ["--config_file", config_file] if config_file else []
    if cpu_threads_per_process is not None:
        args += ["--num_cpu_threads_per_process", str(cpu_threads_per_process)]
    args += [
        "--num_processes", str(num_processes),
        "--num_machines", str(num_machines),
        "--machine_rank", machine_rank,
        "--main_process_ip", main_process_ip,
        "--main_process_port", main_process_port,
        "--mixed_precision", mixed_precision,
        "--dynamo_backend", "no",
    ]
    if num_processes > 1:
        args.append("--multi_gpu")
    if num_machines > 1:
        args += ["--rdzv_backend", "static", "--same_network"]
    return args


def cpu_threads_per_process(num_processes: int) -> int:
    """This machine's usable cores (affinity/cgroup aware) shared among its ranks, at least 1."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, num_processes))


def free_port() -> int:
    """A TCP port free right now, so two jobs on one machine don't collide on 29500."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalJob:
    """A job in its own session/process group, its output teed to a log file and to stderr."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self._tail: collections.deque[str] = collections.deque(maxlen=200)
        self._last_output = time.time()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, *, cmd: list[str], env: dict[str, str], log_path: Path) -> "LocalJob":
        log_path.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: cancel kills every rank
        )
        return cls(proc, log_path)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        try:
            log_file = open(self.log_path, "ab")
        except OSError:
            log_file = open(os.devnull, "ab")  # disk full: the tail in memory still has the error
        with log_file as log:
            for raw in iter(self.proc.stdout.readline, b""):
                self._last_output = time.time()
                try:
                    log.write(raw)
                    log.flush()
                except OSError:
                    pass  # disk full: keep draining the pipe, or the job blocks on its next print
                line = raw.decode(errors="replace")
                self._tail.append(line)
                sys.stderr.write(line)  # lands in the step's compute logs

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None:
            self._reader.join(timeout=5)  # the last lines (the traceback) before we report
        return code

    def cancel(self, *, grace_s: float = 10.0) -> None:
        """SIGTERM the whole group, then SIGKILL whatever is left after `grace_s`."""
        kill_group(self.proc.pid, grace_s=grace_s)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass

    def describe(self) -> str:
        return f"local job (pid {self.proc.pid})"

    def log_tail(self) -> str:
        return "".join(self._tail)

    def last_output_time(self) -> float:
        return self._last_output


def kill_group(pgid: int, *, grace_s: float) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace_s
    while time.time() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies still count for killpg(0); reap the leader's if it is ours.
    try:
        pid, _ = os.waitpid(pgid, os.WNOHANG)
        if pid == pgid:
            os.killpg(pgid, 0)
    except (ChildProcessError, ProcessLookupError):
        return _any_live_member(pgid)
    return True


def _any_live_member(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
