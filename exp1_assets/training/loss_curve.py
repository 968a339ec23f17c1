"""The training loss curve: Trainer's `log_history` -> a PNG next to the checkpoint.

Its Markdown form (`exp1_assets.markdown.png_markdown`, a base64 data URI) travels in the Dagster
materialization metadata so the UI shows the curve without reading the artifact store.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def loss_series(log_history: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Split Trainer log entries into (step, loss) pairs for training and validation.

    >>> loss_series([{"step": 1, "loss": 3.0}, {"step": 1, "eval_loss": 2.5}, {"step": 2, "lr": 1}])
    {'train': [(1, 3.0)], 'validation': [(1, 2.5)]}
    """
    train = [(int(e["step"]), float(e["loss"])) for e in log_history if "loss" in e and "step" in e]
    validation = [
        (int(e["step"]), float(e["eval_loss"])) for e in log_history if "eval_loss" in e and "step" in e
    ]
    return {"train": train, "validation": validation}


def plot_loss_curve(log_history: Sequence[dict[str, Any]], *, path: str | Path, title: str) -> Path:
    """Write train + validation loss vs optimizer step to `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot as plt

    series = loss_series(log_history)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for label, points, style in (("train", series["train"], "-"), ("validation", series["validation"], "o-")):
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, style, label=label, markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path

