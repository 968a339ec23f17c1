"""The local backend: a job in its own process group, so cancelling it kills every rank.

`kill_group` also finds group members that outlived the leader (through /proc): a rank that
ignores SIGTERM while the launcher process already exited must not survive the run.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


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
    """SIGTERM process group `pgid`, then SIGKILL it if anything is left after `grace_s`."""
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
