"""Compare model sizes: one table, thresholds, the scaling fit and plots over whatever sizes exist.

Inputs per size (any may be missing; a missing size is listed, never a crash):
- `reports[size]`: the evaluation `report.json` (its `metrics` block, and `intervals`: 95% bootstrap
  bounds per metric, `{"low", "high"}`, either null where not computable; absent in older reports);
- `training[size]`: the checkpoint's `train_result.json` (`param_count`, `tokens_seen`, `wall_time_s`,
  `tokens_per_s`, `final_train_loss`, `val_loss_after`);
- `loss_histories[size]`: the Trainer `log_history` (rows with `step` and `eval_loss`);
- `benchmarks[size]`: the benchmark report's `benchmarks.json` (`tasks`: per task `metric`, `value`,
  `stderr`, `chance`, `above_chance`; docs/artifacts.md). A size without it shows n/a.

The scaling fit (final validation loss against parameters, `evaluation.scaling`) uses every size
with a finite loss and parameter count, whatever its role in the registry; the table's `role`
column says which sizes are the research plan's and which are the CPU ladder's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from exp1_assets.evaluation.reports import write_json, write_text
from exp1_assets.evaluation.scaling import fitted_curve, scaling_summary
from exp1_assets.evaluation.thresholds import Thresholds
from exp1_assets.markdown import format_cell, md_escape, md_table
from exp1_assets.sizes import SIZES

COLUMNS = ("size", "role", "parameters", "tokens_trained", "wall_time_s", "tokens_per_s", "final_train_loss",
           "final_val_loss", "perplexity", "rouge_l", "bleu", "exact_accuracy", "ppl_pass", "rouge_l_pass")
# Metrics shown with their confidence interval (report["intervals"]) in the table and the plots.
INTERVAL_METRICS = ("perplexity", "rouge_l", "bleu", "exact_accuracy")
AXIS_LABELS = {"val_loss": "final validation loss (nats/token)", "perplexity": "perplexity (assistant tokens)",
               "rouge_l": "ROUGE-L", "exact_accuracy": "exact-answer accuracy"}


def _number(mapping: Mapping[str, Any], *keys: str) -> float:
    """The first present, numeric key (training results name things differently across versions)."""
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return float("nan")


def _interval(report: Mapping[str, Any], metric: str) -> dict[str, float] | None:
    """The metric's finite {low, high} from report["intervals"]; None when absent or not computable."""
    intervals = report.get("intervals")
    bounds = intervals.get(metric) if isinstance(intervals, Mapping) else None
    if not isinstance(bounds, Mapping):
        return None
    low, high = _number(bounds, "low"), _number(bounds, "high")
    return {"low": low, "high": high} if math.isfinite(low) and math.isfinite(high) else None


def _benchmark_tasks(benchmarks: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task: metric, value, stderr (None when absent), chance, above_chance; malformed entries skipped."""
    tasks = benchmarks.get("tasks")
    out = {}
    for task, entry in (tasks.items() if isinstance(tasks, Mapping) else ()):
        value = _number(entry, "value") if isinstance(entry, Mapping) else math.nan
        if math.isfinite(value):
            stderr, chance = _number(entry, "stderr"), _number(entry, "chance")
            metric = entry.get("metric")
            out[str(task)] = {"metric": str(metric) if metric else None, "value": value,
                              "stderr": stderr if math.isfinite(stderr) else None,
                              "chance": chance if math.isfinite(chance) else None,
                              "above_chance": entry.get("above_chance") is True}
    return out


def _row(size: str, report: Mapping[str, Any], training: Mapping[str, Any],
         history: Sequence[Mapping[str, Any]], *, benchmarks: Mapping[str, Any],
         thresholds: Thresholds) -> dict[str, Any]:
    metrics = report.get("metrics", report)
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    train_losses = [h["loss"] for h in history if "loss" in h]
    registered = SIZES.get(size)
    row = {
        "size": size,
        "role": registered.role if registered else None,
        "parameters": _number(training, "param_count", "parameters", "num_parameters"),
        "tokens_trained": _number(training, "tokens_seen", "tokens_trained", "num_tokens"),
        "wall_time_s": _number(training, "wall_time_s", "train_runtime", "wall_time"),
        "tokens_per_s": _number(training, "tokens_per_s"),
        "final_train_loss": _number(training, "final_train_loss", "train_loss"),
        "final_val_loss": _number(training, "val_loss_after", "final_val_loss", "eval_loss"),
        **{metric: _number(metrics, metric) for metric in INTERVAL_METRICS},
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
    row["intervals"] = {metric: _interval(report, metric) for metric in INTERVAL_METRICS}
    row["benchmarks"] = _benchmark_tasks(benchmarks)
    return row


def _cell(row: Mapping[str, Any], column: str) -> Any:
    """A table cell: text escaped, interval metrics as `value (low–high)`."""
    if column in ("size", "role"):
        return md_escape(row[column] or "")
    interval = row["intervals"].get(column) if column in INTERVAL_METRICS else None
    if interval and math.isfinite(row[column]):
        return f"{format_cell(row[column])} ({format_cell(interval['low'])}–{format_cell(interval['high'])})"
    return row[column]


def _benchmark_cell(row: Mapping[str, Any], task: str) -> str:
    """`value ± stderr` (lm-eval's stderr), the value alone without one, n/a without the task."""
    entry = row["benchmarks"].get(task)
    if entry is None:
        return "n/a"
    stderr = f" ± {format_cell(entry['stderr'])}" if entry["stderr"] is not None else ""
    return f"{format_cell(entry['value'])}{stderr}"


def comparison_table(rows: Sequence[Mapping[str, Any]], *, columns: Sequence[str] = COLUMNS) -> str:
    """The Markdown table: `columns`, then one accuracy column per benchmark task any size has.

    >>> rows = [{"size": "a", "intervals": {"perplexity": {"low": 1.5, "high": 2.5}},
    ...          "benchmarks": {"mc": {"metric": "acc", "value": 0.5, "stderr": 0.05}}, "perplexity": 2.0},
    ...         {"size": "b", "intervals": {}, "benchmarks": {}, "perplexity": float("nan")}]
    >>> print(comparison_table(rows, columns=("size", "perplexity")))
    | size | perplexity | mc (acc) |
    | --- | --- | --- |
    | a | 2.0000 (1.5000–2.5000) | 0.5000 ± 0.0500 |
    | b | n/a | n/a |
    """
    tasks = {task: entry["metric"] for row in rows for task, entry in row["benchmarks"].items()}
    headers = [*columns, *(f"{md_escape(task)} ({md_escape(metric)})" if metric else md_escape(task)
                           for task, metric in tasks.items())]
    return md_table(headers, [[_cell(r, c) for c in columns] + [_benchmark_cell(r, t) for t in tasks]
                              for r in rows])


def _plots():
    import matplotlib
    matplotlib.use("Agg")  # no display on a cluster node or in a code server
    import matplotlib.pyplot as plt
    return plt


def _plot_loss_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> bool:
    plt = _plots()
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
                        path: Path, fit: Mapping[str, Any] | None = None) -> list[str]:
    """`key` against parameters (log x), each point with its interval as an error bar where the
    report has one, the bars judged by, and the fitted law. Returns the sizes drawn with an error bar."""
    plt = _plots()
    points = sorted((r["parameters"], r[key], r["size"], r["intervals"].get(key)) for r in rows
                    if r["parameters"] > 0 and math.isfinite(r[key]))
    fig, ax = plt.subplots(figsize=(6, 4))
    with_bars = []
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, marker="o", linestyle="-" if fit is None else "none", label="sizes")
        for x, y, label, interval in points:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4))
            if interval:  # absent (an older report) or not computable: no bar
                ax.errorbar([x], [y], yerr=[[max(y - interval["low"], 0.0)], [max(interval["high"] - y, 0.0)]],
                            fmt="none", ecolor="black", capsize=3)
                with_bars.append(label)
    drew_fit = fit is not None and len(points) > 1
    if drew_fit:
        span = [points[0][0] * (points[-1][0] / points[0][0]) ** (i / 50) for i in range(51)]
        ax.plot(span, fitted_curve({"fit": fit}, parameters=span), color="tab:red",
                label=f"fit: {fit['a']:.3g}·N^-{fit['alpha']:.3f} (R²={fit['r_squared']:.3f})")
    for threshold in sorted(set(thresholds)):  # the bars the sizes were judged by (usually one)
        ax.axhline(threshold, color="gray", linestyle="--", linewidth=1, label=f"threshold {threshold}")
    ax.set_xscale("log")
    if drew_fit:
        ax.set_yscale("log")  # a power law is a straight line in log-log
    label = AXIS_LABELS.get(key, key)
    ax.set(xlabel="parameters (log scale)", ylabel=label, title=f"{label} vs parameters")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return with_bars


def _shown(residual: float) -> float:
    """A residual as the table prints it (4 decimals), without the sign of a rounded-away -0.0."""
    return round(residual, 4) + 0.0


def _scaling_markdown(scaling: Mapping[str, Any]) -> list[str]:
    md = ["## Scaling: final validation loss vs parameters", ""]
    fit = scaling["fit"]
    if fit is None:
        md += [f"No power-law fit: {scaling['reason']}.", ""]
    else:
        md += [f"Fit: {fit['statement']}.", "",
               md_table(["size", "observed loss", "fitted loss", "residual", "log residual"],
                        [[md_escape(size), r["observed"], r["predicted"], _shown(r["residual"]),
                          _shown(r["log_residual"])] for size, r in fit["residuals"].items()]), ""]
    if scaling.get("data_note"):
        md += [f"Caution, {scaling['data_note']}: at a fixed token budget the larger sizes are limited by the "
               "data, not by their parameters, so the curve flattens and its exponent is not a model-size law.", ""]
    if scaling["excluded"]:
        md += ["Not in the fit: " + "; ".join(f"{md_escape(s)} ({why})" for s, why in scaling["excluded"].items()), ""]
    return md


def compare_sizes(
    *, reports: Mapping[str, Mapping[str, Any]], training: Mapping[str, Mapping[str, Any]],
    loss_histories: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: str | Path, all_sizes: Sequence[str],
    benchmarks: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write comparison.json, comparison.md and PNG plots; return metadata-ready numbers + Markdown.

    Each size is judged by the thresholds its own report recorded (`Thresholds.recorded_in`): the
    same bars its checks used, whatever the run's config said.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    benchmarks = benchmarks or {}
    present = [s for s in all_sizes if s in reports or s in training]
    missing = [s for s in all_sizes if s not in present]
    judged_by = {s: Thresholds.recorded_in(reports.get(s, {})) for s in present}
    rows = [_row(s, reports.get(s, {}), training.get(s, {}), loss_histories.get(s, []),
                 benchmarks=benchmarks.get(s, {}), thresholds=judged_by[s]) for s in present]
    bars = list(judged_by.values()) or [Thresholds()]
    scaling = scaling_summary(rows)

    plots = {"loss_curves": out / "val_loss_curves.png", "val_loss": out / "val_loss_vs_params.png",
             "perplexity": out / "perplexity_vs_params.png", "rouge_l": out / "rouge_l_vs_params.png",
             "exact_accuracy": out / "exact_accuracy_vs_params.png"}
    _plot_loss_curves({s: loss_histories.get(s, []) for s in present}, plots["loss_curves"])
    error_bars = {
        "val_loss": _plot_vs_parameters([{**r, "val_loss": r["final_val_loss"]} for r in rows], key="val_loss",
                                        thresholds=[], path=plots["val_loss"], fit=scaling["fit"]),
        "perplexity": _plot_vs_parameters(rows, key="perplexity", thresholds=[t.perplexity_below for t in bars],
                                          path=plots["perplexity"]),
        "rouge_l": _plot_vs_parameters(rows, key="rouge_l", thresholds=[t.rouge_l_above for t in bars],
                                       path=plots["rouge_l"]),
        "exact_accuracy": _plot_vs_parameters(rows, key="exact_accuracy", thresholds=[], path=plots["exact_accuracy"]),
    }

    table = comparison_table(rows) if rows else ""
    summary = {
        "sizes": present, "missing_sizes": missing, "rows": rows, "scaling": scaling,
        "thresholds": {s: asdict(t) for s, t in judged_by.items()},
        "plots": {k: p.name for k, p in plots.items()}, "error_bars": error_bars,
    }
    write_json(out / "comparison.json", summary)
    md = ["# Model size comparison", "", table or "(no sizes evaluated yet)", ""]
    md += ["Metrics in parentheses: 95% bootstrap interval (where the report has one). Benchmarks: "
           "lm-evaluation-harness accuracy ± its stderr. Role: `plan` sizes are the research plan's; "
           "`debug` and `ladder` sizes are CPU sizes, not the plan's.", ""]
    md += ["Each size is judged by the thresholds its own report recorded: "
           + "; ".join(f"{md_escape(s)}: perplexity < {t.perplexity_below:g}, ROUGE-L > {t.rouge_l_above:g}"
                       for s, t in judged_by.items()) if judged_by else "", ""]
    if missing:
        md += [f"Missing sizes (not trained/evaluated yet): {', '.join(missing)}", ""]
    md += _scaling_markdown(scaling)
    md += [f"![{k}]({p.name})" for k, p in plots.items()]
    write_text(out / "comparison.md", "\n".join(md) + "\n")
    return {"table_markdown": table, "num_sizes": len(present), "missing_sizes": missing, "rows": rows,
            "scaling": scaling, "error_bars": error_bars, "plot_paths": {k: str(p) for k, p in plots.items()}}
