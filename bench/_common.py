"""Shared helpers for the benchmarks: the built-in corpus pipeline (cached), timing, output.

Every benchmark runs both sides in one process, alternating, and reports medians and ratios:
the machine may be shared, so absolute numbers drift while side-by-side ratios hold up.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT_DIR = Path(os.environ.get("BENCH_OUT_DIR") or BENCH_DIR / "out")  # the smoke test points it at tmp

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["load_avg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def write_result(name: str, result: dict[str, Any]) -> Path:
    """bench/out/<name>.json with the command line, commit, date and machine next to the numbers."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": git_commit(),
               "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), **result}
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def builtin_pipeline(*, builtin_size: int, max_length: int, vocab_size: int = 4096, seed: int = 0) -> dict[str, Path]:
    """ingest builtin -> split -> train tokenizer -> pack, with the library, cached under bench/out/cache.

    Returns the paths: splits dir, tokenizer dir, packed dir (train.arrow, validation.arrow).
    """
    from exp1_assets.data.packing import pack_dataset
    from exp1_assets.data.sources import ingest_conversations
    from exp1_assets.data.splits import SplitSpec, split_conversations
    from exp1_assets.data.tokenizer import train_bpe_tokenizer

    root = OUT_DIR / "cache" / f"builtin{builtin_size}_seed{seed}_vocab{vocab_size}"
    raw, splits, tok = root / "raw", root / "splits", root / "tokenizer"
    packed = root / f"packed{max_length}"
    if not (raw / "summary.json").is_file():
        ingest_conversations(source="builtin", path=None, hub_id="", max_samples=None, seed=seed,
                             out_dir=raw, builtin_size=builtin_size)
    if not (splits / "summary.json").is_file():
        split_conversations(conversations_path=raw / "conversations.parquet", out_dir=splits,
                            spec=SplitSpec(seed=seed))
    if not (tok / "tokenizer.json").is_file():
        train_bpe_tokenizer(train_path=splits / "train.parquet", out_dir=tok, vocab_size=vocab_size)
    if not (packed / "meta.json").is_file():
        pack_dataset(tokenizer_dir=tok, splits_dir=splits, out_dir=packed, max_length=max_length)
    return {"splits": splits, "tokenizer": tok, "packed": packed}


def peak_matmul_flops(*, device: str = "cpu", dtype: Any = None, n: int = 2048, seconds: float = 3.0) -> float:
    """This machine's measured matmul peak (FLOP/s): a large square torch.matmul in a loop, best of 3."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):  # warm up (thread pool, cuBLAS handles)
        a @ b
    sync()
    best = 0.0
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            a @ b
            count += 1
        sync()
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start))
    return best
