"""Compare model sizes: one table, thresholds, and scaling plots over whatever sizes exist.

Inputs per size (any may be missing; a missing size is listed, never a crash):
- `reports[size]`: the evaluation `report.json` (its `metrics` block);
- `training[size]`: the checkpoint's `train_result.json` (`param_count`, `tokens_seen`, `wall_time_s`,
  `tokens_per_s`, `final_train_loss`, `val_loss_after`);
- `loss_histories[size]`: the Trainer `log_history` (rows with `step` and `eval_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from exp1_assets.evaluation.reports import write_json, write_text
from exp1_assets.evaluation.thresholds import Thresholds
from exp1_assets.markdown import md_escape, md_table

COLUMNS = ("size", "parameters", "tokens_trained", "wall_time_s", "tokens_per_s", "final_train_loss",
           "final_val_loss", "perplexity", "rouge_l", "bleu", "ppl_pass", "rouge_l_pass")


def _number(mapping: Mapping[str, Any], *keys: str) -> float:
    """The first present, numeric key (training results name things differently across versions)."""
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return float("nan")


def _row(size: str, report: Mapping[str, Any], training: Mapping[str, Any],
         history: Sequence[Mapping[str, Any]], *, thresholds: Thresholds) -> dict[str, Any]:
    metrics = report.get("metrics", report)
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    train_losses = [h["loss"] for h in history if "loss" in h]
    row = {
        "size": size,
        "parameters": _number(training, "param_count", "parameters", "num_parameters"),
        "tokens_trained": _number(training, "tokens_seen", "tokens_trained", "num_tokens"),
        "wall_time_s": _number(training, "wall_time_s", "train_runtime", "wall_time"),
        "tokens_per_s": _number(training, "tokens_per_s"),
        "final_train_loss": _number(training, "final_train_loss", "train_loss"),
        "final_val_loss": _number(training, "val_loss_after", "final_val_loss", "eval_loss"),
        "perplexity": _number(metrics, "perplexity"),
        "rouge_l": _number(metrics, "rouge_l"),
        "bleu": _number(metrics, "bleu"),
    }
    if math.isnan(row["final_train_loss"]) and train_losses:
        row["final_train_loss"] = float(train_losses[-1])
    if math.isnan(row["final_val_loss"]) and eval_losses:
        row["final_val_loss"] = float(eval_losses[-1])
    if math.isnan(row["tokens_per_s"]) and row["wall_time_s"] > 0:
        row["tokens_per_s"] = row["tokens_trained"] / row["wall_time_s"]
    # NaN compares False: a size without the metric fails the threshold rather than passing it.
    checks = thresholds.judge(row)
    row["ppl_pass"] = checks["perplexity_below_threshold"]["passed"]
    row["rouge_l_pass"] = checks["rouge_l_above_threshold"]["passed"]
    return row


def _plot_loss_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> bool:
    import matplotlib
    matplotlib.use("Agg")  # no display on a cluster node or in a code server
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for size, history in histories.items():
        points = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=size)
            drawn = True
    ax.set(xlabel="step", ylabel="validation loss", title="Validation loss by model size")
    if drawn:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def _plot_vs_parameters(rows: Sequence[Mapping[str, Any]], *, key: str, thresholds: Sequence[float],
                        path: Path) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["parameters"], r[key], r["size"]) for r in rows
              if r["parameters"] > 0 and math.isfinite(r[key])]
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        xs, ys, labels = zip(*sorted(points))
        ax.plot(xs, ys, marker="o")
        for x, y, label in zip(xs, ys, labels):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4))
    for threshold in sorted(set(thresholds)):  # the bars the sizes were judged by (usually one)
        ax.axhline(threshold, color="gray", linestyle="--", linewidth=1, label=f"threshold {threshold}")
    ax.set_xscale("log")
    ax.set(xlabel="parameters (log scale)", ylabel=key, title=f"{key} vs model size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return bool(points)


def compare_sizes(
    *, reports: Mapping[str, Mapping[str, Any]], training: Mapping[str, Mapping[str, Any]],
    loss_histories: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: str | Path, all_sizes: Sequence[str],
) -> dict[str, Any]:
    """Write comparison.json, comparison.md and PNG plots; return metadata-ready numbers + Markdown.

    Each size is judged by the thresholds its own report recorded (`Thresholds.recorded_in`): the
    same bars its checks used, whatever the run's config said.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    present = [s for s in all_sizes if s in reports or s in training]
    missing = [s for s in all_sizes if s not in present]
    judged_by = {s: Thresholds.recorded_in(reports.get(s, {})) for s in present}
    rows = [_row(s, reports.get(s, {}), training.get(s, {}), loss_histories.get(s, []),
                 thresholds=judged_by[s]) for s in present]
    bars = list(judged_by.values()) or [Thresholds()]

    plots = {"loss_curves": out / "val_loss_curves.png", "perplexity": out / "perplexity_vs_params.png",
             "rouge_l": out / "rouge_l_vs_params.png"}
    _plot_loss_curves({s: loss_histories.get(s, []) for s in present}, plots["loss_curves"])
    _plot_vs_parameters(rows, key="perplexity", thresholds=[t.perplexity_below for t in bars], path=plots["perplexity"])
    _plot_vs_parameters(rows, key="rouge_l", thresholds=[t.rouge_l_above for t in bars], path=plots["rouge_l"])

    table = md_table(COLUMNS, [[md_escape(r["size"]) if c == "size" else r[c] for c in COLUMNS] for r in rows])
    summary = {
        "sizes": present, "missing_sizes": missing, "rows": rows,
        "thresholds": {s: asdict(t) for s, t in judged_by.items()},
        "plots": {k: p.name for k, p in plots.items()},
    }
    write_json(out / "comparison.json", summary)
    md = ["# Model size comparison", "", table or "(no sizes evaluated yet)", ""]
    md += ["Each size is judged by the thresholds its own report recorded: "
           + "; ".join(f"{md_escape(s)}: perplexity < {t.perplexity_below:g}, ROUGE-L > {t.rouge_l_above:g}"
                       for s, t in judged_by.items()) if judged_by else "", ""]
    if missing:
        md += [f"Missing sizes (not trained/evaluated yet): {', '.join(missing)}", ""]
    md += [f"![{k}]({p.name})" for k, p in plots.items()]
    write_text(out / "comparison.md", "\n".join(md) + "\n")
    return {"table_markdown": table, "num_sizes": len(present), "missing_sizes": missing, "rows": rows,
            "plot_paths": {k: str(p) for k, p in plots.items()}}
