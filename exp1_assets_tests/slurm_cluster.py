"""A session fixture: a real, throw-away Slurm cluster (2 nodes) on this machine.

`scripts/slurm_cluster.sh up` installs the packages with apt when missing and starts munged,
slurmctld and two slurmd; `down` stops them by PID — also when tests fail. Where that is not
possible (not root, no apt), the tests that use the fixture are skipped with the reason.

`make test` runs two pytest workers, and a session fixture is made once per worker: keep the tests
that use the cluster in one file (test_slurm.py), which `--dist loadfile` keeps on one worker, so
the machine runs one cluster, not two.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_cluster.sh"
NODES = 2
CANNOT_RUN = 3  # the script's exit code for "not root / cannot install"


def _free_port_block(count: int) -> int:
    """A port p with p and p+10001..p+10000+count free (slurmctld and each slurmd)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = sock.getsockname()[1]
        if base > 50000:
            continue
        if all(_is_free(base + 10000 + i) for i in range(1, count + 1)):
            return base
    raise RuntimeError("no free block of ports for the test cluster")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """`{"SLURM_CONF": ..., "root": ...}`; SLURM_CONF is exported to the session while it runs."""
    if os.geteuid() != 0:
        reason = "the Slurm test cluster needs root (it starts munged, slurmctld and slurmd)"
        print(f"\nSKIP slurm: {reason}")
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="exp1-slurm-"))
    env = {**os.environ, "SLURM_TEST_ROOT": str(root), "SLURM_TEST_NODES": str(NODES),
           "SLURM_TEST_PORT": str(_free_port_block(NODES))}
    up = subprocess.run(["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=900)
    try:
        if up.returncode == CANNOT_RUN:
            reason = f"cannot start the Slurm test cluster: {up.stderr.strip()}"
            print(f"\nSKIP slurm: {reason}")
            pytest.skip(reason)
        assert up.returncode == 0, f"slurm_cluster.sh up failed:\n{up.stdout}\n{up.stderr}"
        conf = str(root / "etc" / "slurm.conf")
        previous = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = conf
        try:
            yield {"SLURM_CONF": conf, "root": str(root)}
        finally:
            if previous is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = previous
    finally:
        down = subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=300)
        if down.returncode != 0:
            print(f"slurm_cluster.sh down failed:\n{down.stdout}\n{down.stderr}")
