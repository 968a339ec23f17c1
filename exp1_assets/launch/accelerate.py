"""The `accelerate launch` command line and what it needs from this machine: cores, a port, GPUs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Literal

MixedPrecision = Literal["no", "fp16", "bf16", "fp8"]
MIXED_PRECISIONS: tuple[str, ...] = ("no", "fp16", "bf16", "fp8")


def accelerate_args(
    *,
    num_processes: int,
    num_machines: int,
    machine_rank: str,
    main_process_ip: str,
    main_process_port: str,
    mixed_precision: MixedPrecision = "no",
    config_file: str | None = None,
    cpu_threads_per_process: int | str | None = None,
) -> list[str]:
    """`accelerate launch` flags for `num_machines` x (num_processes / num_machines) ranks.

    On a CPU-only machine two ranks need `--multi_gpu` (falls back to gloo); `--cpu
    --num_processes 2` silently starts a single process. Without `--num_cpu_threads_per_process`
    accelerate sets OMP_NUM_THREADS=1 for every rank: one rank on a 2-core machine then trained
    on one core (found in the end-to-end benchmark), so the caller passes the cores per rank.

    >>> args = accelerate_args(num_processes=2, num_machines=1, machine_rank="0",
    ...                        main_process_ip="127.0.0.1", main_process_port="29500")
    >>> "--multi_gpu" in args, "--rdzv_backend" in args, "--config_file" in args
    (True, False, False)
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


def visible_gpus() -> int:
    """CUDA devices the jobs would see, without importing torch in the code server."""
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if devices is not None:
        return len([d for d in devices.split(",") if d.strip() and d.strip() != "-1"])
    return len(list(Path("/dev").glob("nvidia[0-9]*")))


def gpu_memory_gib() -> float | None:
    """Memory of the smallest visible GPU, from `nvidia-smi` (None: no GPU or no nvidia-smi).

    Read without torch: the Dagster code server plans runs and must stay light.
    """
    if visible_gpus() == 0 or shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    mib = [float(line) for line in out.split() if line.strip().replace(".", "", 1).isdigit()]
    return min(mib) / 1024 if mib else None


def host_memory_gib() -> float:
    """This machine's RAM, GiB (what CPU ranks share)."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
