"""Token-length statistics of conversations: the numbers and the histogram the UI shows.

`length_analysis` reproduces what the research scripts' `--analyze` printed (mean, median,
percentiles, bucket counts), so a block length can be chosen from data rather than guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

# (label, lower bound inclusive, upper bound exclusive), as in the research scripts' --analyze.
BUCKETS = (
    ("<128", 0, 128),
    ("128-256", 128, 256),
    ("256-512", 256, 512),
    ("512-1024", 512, 1024),
    ("1024-2048", 1024, 2048),
    (">2048", 2048, None),
)


def length_analysis(lengths: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """Summary of token lengths; all zeros (and empty buckets) for no lengths.

    >>> summary = length_analysis([100, 200, 300, 3000])
    >>> summary["count"], summary["max"], summary["median"], summary["buckets"]["<128"]
    (4, 3000, 250.0, 1)
    >>> summary["buckets"][">2048"]
    1
    """
    values = np.asarray(lengths, dtype=np.int64)
    buckets = {}
    for label, low, high in BUCKETS:
        in_bucket = values >= low if high is None else (values >= low) & (values < high)
        buckets[label] = int(in_bucket.sum())
    if values.size == 0:
        stats = dict.fromkeys(("mean", "median", "std", "p90", "p99"), 0.0)
        return {"count": 0, "total": 0, "min": 0, "max": 0, **stats, "buckets": buckets}
    return {
        "count": int(values.size),
        "total": int(values.sum()),
        "min": int(values.min()),
        "max": int(values.max()),
        "mean": round(float(values.mean()), 2),
        "median": round(float(np.median(values)), 2),
        "std": round(float(values.std()), 2),
        "p90": round(float(np.percentile(values, 90)), 2),
        "p99": round(float(np.percentile(values, 99)), 2),
        "buckets": buckets,
    }


def histogram_png(lengths: Sequence[int] | np.ndarray, *, path: Path, title: str) -> Path:
    """A small (600x300) log-count histogram of token lengths, written to `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display: this runs inside Dagster and on servers
    import matplotlib.pyplot as plt

    values = np.asarray(lengths, dtype=np.int64)
    figure, axes = plt.subplots(figsize=(6, 3), dpi=100)
    try:
        if values.size:
            axes.hist(values, bins=min(60, max(1, int(np.unique(values).size))), color="#4C72B0")
            axes.axvline(float(np.median(values)), color="black", linestyle="--", linewidth=1, label="median")
            axes.legend(loc="upper right", fontsize=8)
        axes.set_yscale("log")
        axes.set_xlabel("tokens per conversation")
        axes.set_ylabel("conversations")
        axes.set_title(title, fontsize=9)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
    return path

