"""A real `dagster dev` (webserver + daemon + code server) for tests, and a small GraphQL client.

`start_dagster_dev` runs the same command as `make dev` on a free loopback port, with its own
DAGSTER_HOME (a copy of scripts/dagster.yaml) and EXP1_HOME, and waits until the code location
is LOADED. `stop_dagster_dev` ends it the way a person's Ctrl-C would: SIGTERM to its process
group, then SIGKILL for stragglers, and reports anything that outlived it.

Two traps handled here:
- A process started from a non-interactive shell inherits SIGINT/SIGTERM as *ignored*, and
  `dagster dev` then never stops; the child restores the default handlers before exec.
- Launched training jobs run in their own sessions (so a cancel kills every rank): they are not
  in dagster dev's process group. Every process is found by the DAGSTER_HOME in its environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCATION = "exp1_assets"  # workspace.yaml's location_name
REPOSITORY = "__repository__"  # the repository a `Definitions` object becomes

LOCATION_STATUS = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message stack } } } }
    ... on PythonError { message } } }
"""


@dataclass
class DagsterDev:
    """A running `dagster dev`: its URL, homes and process."""

    url: str
    dagster_home: Path
    exp1_home: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    def graphql(self, query: str, variables: dict[str, Any] | None = None, *, timeout: float = 30) -> dict[str, Any]:
        """POST a query; return `data`, raising with the server's message on GraphQL errors."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
        if payload.get("errors"):
            raise AssertionError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_dagster_home(path: Path) -> Path:
    """An instance folder like `make home` makes: the repository's dagster.yaml, nothing else."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "scripts" / "dagster.yaml", path / "dagster.yaml")
    return path


def dev_env(*, dagster_home: Path, exp1_home: Path, **extra: str) -> dict[str, str]:
    """This process's environment minus anything a launched job would mistake for its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    env.update(DAGSTER_HOME=str(dagster_home), EXP1_HOME=str(exp1_home), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", DAGSTER_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO), **extra)
    return env


def restore_default_signals() -> None:
    """preexec_fn: a non-interactive parent may have left SIGINT/SIGTERM ignored, and that survives exec."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start_dagster_dev(root: Path, *, timeout_s: float = 120) -> DagsterDev:
    """`dagster dev -w workspace.yaml -h 127.0.0.1 -p <free>` in its own session, loaded."""
    dagster_home = make_dagster_home(root / "dagster_home")
    exp1_home = root / "exp1_home"
    exp1_home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = root / "dagster_dev.log"
    cmd = [str(BIN / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=dev_env(dagster_home=dagster_home, exp1_home=exp1_home),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=restore_default_signals)
    dev = DagsterDev(url=f"http://127.0.0.1:{port}", dagster_home=dagster_home, exp1_home=exp1_home,
                     log_path=log_path, proc=proc)
    try:
        wait_until_loaded(dev, timeout_s=timeout_s)
    except BaseException:
        stop_dagster_dev(dev)
        raise
    return dev


def wait_until_loaded(dev: DagsterDev, *, timeout_s: float) -> None:
    """Poll `workspaceOrError` until our location is LOADED (a load error fails at once)."""
    deadline = time.time() + timeout_s
    last = "no answer yet"
    while time.time() < deadline:
        if dev.proc.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {dev.proc.returncode}:\n{dev.log_tail()}")
        try:
            entries = dev.graphql(LOCATION_STATUS, timeout=5)["workspaceOrError"].get("locationEntries", [])
        except (urllib.error.URLError, ConnectionError, TimeoutError, AssertionError) as exc:
            last = repr(exc)
        else:
            ours = [e for e in entries if e["name"] == LOCATION]
            last = repr(ours or entries)
            if ours and ours[0]["loadStatus"] == "LOADED":
                location = ours[0]["locationOrLoadError"] or {}
                if location.get("__typename") == "PythonError":
                    raise RuntimeError(f"code location failed to load: {location['message']}\n{location['stack']}")
                return
        time.sleep(1)
    raise TimeoutError(f"code location {LOCATION} not loaded after {timeout_s:.0f} s ({last}):\n{dev.log_tail()}")


def processes_of(dev: DagsterDev) -> list[int]:
    """Live PIDs in dagster dev's process group or with its DAGSTER_HOME (runs, launched jobs)."""
    marker = f"DAGSTER_HOME={dev.dagster_home}".encode()
    found = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] == "Z":  # a zombie is dead, only not yet reaped
                continue
            in_group = int(stat[2]) == dev.proc.pid
            in_env = marker in (proc_dir / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if in_group or in_env or marker in (proc_dir / "cmdline").read_bytes():
            found.append(int(proc_dir.name))
    return [pid for pid in found if pid != os.getpid()]


def in_group_of(dev: DagsterDev, pid: int) -> bool:
    """Whether `pid` is in dagster dev's process group (its own children, not launched jobs)."""
    try:
        return os.getpgid(pid) == dev.proc.pid
    except ProcessLookupError:
        return False


def stop_dagster_dev(dev: DagsterDev, *, grace_s: float = 30) -> list[int]:
    """SIGTERM the group, wait, SIGKILL what is left; return the PIDs that needed SIGKILL.

    While it shuts down, `dagster dev` may see its code server exit and start a new one, after
    the group's SIGTERM went out: a group member that appears later gets its own SIGTERM and its
    own grace period, so only a process that really ignores SIGTERM counts as a straggler.
    Launched jobs (their own sessions) get no signal from here: stopping them is dagster dev's job.
    """
    started = time.time()
    signalled = {pid: started for pid in processes_of(dev) if in_group_of(dev, pid)}
    try:
        os.killpg(dev.proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    while True:
        now, alive = time.time(), processes_of(dev)
        for pid in alive:
            if pid not in signalled and in_group_of(dev, pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
                signalled[pid] = now
        if dev.proc.poll() is not None and not alive:
            break
        # Each process's grace runs from its own SIGTERM; late arrivals extend it, up to twice over.
        deadline = max([started, *(signalled.get(pid, started) for pid in alive)]) + grace_s
        if now >= min(deadline, started + 2 * grace_s):
            break
        time.sleep(0.2)
    stragglers = processes_of(dev)
    for pid in stragglers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if dev.proc.poll() is None:
        dev.proc.kill()
    dev.proc.wait(timeout=10)
    return stragglers


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    """One `dagster dev` per test module; on teardown nothing of it may be left running."""
    dev = start_dagster_dev(tmp_path_factory.mktemp("dagster_dev"))
    yield dev
    stragglers = stop_dagster_dev(dev)
    time.sleep(0.5)
    left = processes_of(dev)
    assert not stragglers, f"processes ignored SIGTERM and needed SIGKILL: {stragglers}\n{dev.log_tail()}"
    assert not left, f"processes of dagster dev still running after SIGKILL: {left}"
