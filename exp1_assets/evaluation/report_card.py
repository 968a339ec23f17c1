"""Report cards: one page per size and one across sizes, the verdict in plain words, then the numbers.

Inputs are the JSON the other assets write (docs/artifacts.md): the evaluation `report.json`
(headline metrics, the plan's checks, bootstrap intervals), the checkpoint's `train_result.json`
and the `benchmarks.json` of lm-evaluation-harness. Any of them may be missing or older than the
intervals: the card then says "not measured" for what it lacks, and never fills in a number.

A bar is "met" on the point estimate (the asset check's verdict) and "met by the whole interval"
when the entire 95% CI lies on the passing side; the card says which, so a bar met by luck of the
sample does not read like a result. This module reads the JSON into cards
(`report_card_model`: the cards' data and the verdicts' words) and writes the pages
(`report_card_render`: Markdown and HTML).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from exp1_assets.evaluation.report_card_model import (
    BARS, METRICS, NOT_MEASURED, Accuracy, Bar, Benchmark, ComparisonCard, Measure, SizeCard, and_join,
    bars_clause, benchmarks_clause, number, scaling_text,
)
from exp1_assets.evaluation.reports import write_text
from exp1_assets.evaluation.thresholds import Thresholds


# ---------------------------------------------------------------------------------------------
# Building cards from the artifacts' JSON
# ---------------------------------------------------------------------------------------------
def size_card(
    *, size: str, report: Mapping[str, Any] | None, training: Mapping[str, Any] | None = None,
    benchmarks: Mapping[str, Any] | None = None, parameters: int | None = None, role: str | None = None,
    note: str | None = None, links: Mapping[str, str | None] | None = None,
) -> SizeCard:
    """One size's card from its report.json, train_result.json and benchmarks.json (each may be None).

    `parameters` overrides train_result's `param_count`; `links` maps a label to an href relative to
    the card (None: not there yet).
    """
    report = report or {}
    training = training or {}
    metrics = report.get("metrics") or {}
    intervals = report.get("intervals") or {}
    confidence = number((report.get("bootstrap") or {}).get("confidence")) or 0.95
    ci = f"{100 * confidence:g}% CI"
    thresholds = Thresholds.recorded_in(report)
    checks = report.get("checks") or thresholds.judge(metrics)
    bars = tuple(_bar(checks.get(name) or {}, label=label, metric=metric, operator=op, digits=digits,
                      intervals=intervals, fallback=metrics, threshold=getattr(thresholds, field))
                 for name, label, metric, op, digits, field in BARS)
    measures = tuple(Measure(label, number(metrics.get(key)), *_interval(intervals.get(key)), digits=digits)
                     for key, label, digits in METRICS)
    exact = _accuracies(report.get("exact_accuracy"), intervals=intervals, prefix="exact_accuracy/",
                        confidence=confidence)
    if not exact and number(metrics.get("exact_accuracy")) is not None:  # reports without the per-task block
        exact = (Accuracy("all", number(metrics["exact_accuracy"]), None, None,
                          *_interval(intervals.get("exact_accuracy")), confidence=confidence),)
    bench = _benchmarks(benchmarks)
    bootstrap = report.get("bootstrap") or {}
    resamples, seed = number(bootstrap.get("resamples")), number(bootstrap.get("seed"))
    owner = "the plan's" if thresholds == Thresholds() else "this run's"
    overall = exact[0] if exact and exact[0].task == "all" else None
    verdict = "; ".join([bars_clause(bars, owner=owner, ci=ci) if report else "not evaluated yet",
                         f"exact answers {overall.text()}" if overall else f"exact answers {NOT_MEASURED}",
                         benchmarks_clause(bench)])
    return SizeCard(
        size=size, role=role, note=note, tokens_trained=number(training.get("tokens_seen")),
        parameters=number(parameters) if parameters is not None else number(training.get("param_count")),
        wall_time_s=number(training.get("wall_time_s")), final_val_loss=number(training.get("val_loss_after")),
        bar_owner=owner, ci=ci, bars=bars, metrics=measures, exact=exact, benchmarks=bench, evaluated=bool(report),
        probes=_accuracies(report.get("probe_accuracy"), intervals={}, prefix="", confidence=confidence),
        links=tuple((label, href) for label, href in (links or {}).items()),
        intervals_from=None if resamples is None else f"{ci}s from {int(resamples)} seeded bootstrap resamples"
                                                      + ("" if seed is None else f" (seed {int(seed)})"),
        verdict=verdict,
    )


def comparison_card(
    cards: Sequence[SizeCard], *, scaling: Mapping[str, Any] | str | None = None,
    card_dirs: Mapping[str, str] | None = None,
) -> ComparisonCard:
    """All sizes' cards on one page.

    `scaling`: the fit of final validation loss against parameters, L = a * N^-alpha: the size
    comparison's scaling summary ({"fit": {"a", "alpha", "r_squared", "n", "residuals"} or None,
    "reason": why not}), a bare fit mapping, or the reason string; None: no fit reported.
    `card_dirs`: size -> the folder of its card, relative to this one.
    """
    evaluated = [c for c in cards if c.evaluated]
    ci = evaluated[0].ci if evaluated else "95% CI"
    if not evaluated:
        parts = ["no size evaluated yet"]
    else:
        met = ("clears", "point_only", "met_without_interval")
        firm = [c.size for c in evaluated if c.bars and all(b.status == "clears" for b in c.bars)]
        loose = [c.size for c in evaluated if c.size not in firm and c.bars and all(b.status in met for b in c.bars)]
        parts = [f"{and_join(sizes)} {'meets' if len(sizes) == 1 else 'meet'} every bar {how}"
                 for sizes, how in ((firm, f"by the whole {ci}"), (loose, "on the point estimate only")) if sizes]
        if not parts:
            parts = ["no size meets every bar"]
        overall = [(c.exact[0].accuracy, c) for c in evaluated
                   if c.exact and c.exact[0].task == "all" and c.exact[0].accuracy is not None]
        if overall:
            best = max(overall, key=lambda pair: pair[0])[1]
            parts.append(f"best exact answers {best.size}: {best.exact[0].text()}")
        else:
            parts.append(f"exact answers {NOT_MEASURED}")
    measured = [c for c in cards if c.benchmarks]
    above = [c.size for c in measured if any(b.above_chance for b in c.benchmarks or ())]
    parts.append(f"benchmarks {NOT_MEASURED}" if not measured
                 else f"benchmarks above chance on some task for {and_join(above)}" if above
                 else "benchmarks at chance for every size measured")
    if isinstance(scaling, str):
        fit, reason = None, scaling
    elif isinstance(scaling, Mapping) and "fit" in scaling:  # the comparison's summary: fit or reason
        fit, reason = scaling["fit"] if isinstance(scaling["fit"], Mapping) else None, scaling.get("reason")
    else:
        fit, reason = scaling, None
    text = scaling_text(fit, reason=reason)
    if isinstance(scaling, Mapping) and scaling.get("data_note"):
        text += f"; {scaling['data_note']}"
    parts.append(text)
    residuals = (fit or {}).get("residuals")
    dirs = card_dirs or {}
    return ComparisonCard(
        cards=tuple(cards), scaling=text, verdict="; ".join(parts),
        card_dirs=tuple((c.size, dirs[c.size]) for c in cards if c.size in dirs),
        residuals=tuple((str(size), *(number(r.get(k)) for k in ("observed", "predicted", "residual")))
                        for size, r in residuals.items() if isinstance(r, Mapping))
        if isinstance(residuals, Mapping) else ())



# ---------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------
def render_markdown(card: SizeCard | ComparisonCard) -> str:
    from exp1_assets.evaluation.report_card_render import markdown_page

    return markdown_page(card)


def render_html(card: SizeCard | ComparisonCard) -> str:
    from exp1_assets.evaluation.report_card_render import html_page

    return html_page(card)


def write_card(out_dir: str | Path, card: SizeCard | ComparisonCard) -> dict[str, Path]:
    """card.md and card.html into `out_dir` (each written atomically)."""
    out = Path(out_dir)
    paths = {"md": out / "card.md", "html": out / "card.html"}
    write_text(paths["md"], render_markdown(card))
    write_text(paths["html"], render_html(card))
    return paths


def _interval(entry: Any) -> tuple[float | None, float | None]:
    if not isinstance(entry, Mapping):
        return None, None
    low, high = number(entry.get("low")), number(entry.get("high"))
    return (low, high) if low is not None and high is not None else (None, None)


def _bar(check: Mapping[str, Any], *, label: str, metric: str, operator: Literal["<", ">"], digits: int,
         intervals: Mapping[str, Any], fallback: Mapping[str, Any], threshold: float) -> Bar:
    """A bar from its check entry; what an older check lacks comes from the report's other blocks."""
    value = number(check.get("value", fallback.get(metric)))
    low, high = _interval(check) if "low" in check else _interval(intervals.get(metric))
    recorded = number(check.get("threshold"))
    threshold = threshold if recorded is None else recorded
    passed = check.get("passed")
    if not isinstance(passed, bool):
        passed = value is not None and (value < threshold if operator == "<" else value > threshold)
    clears = check.get("interval_clears")
    if low is None:
        clears = None
    elif not isinstance(clears, bool):
        clears = high < threshold if operator == "<" else low > threshold
    return Bar(Measure(label, value, low, high, digits=digits), operator, threshold, passed, clears)


def _accuracies(table: Any, *, intervals: Mapping[str, Any], prefix: str, confidence: float) -> tuple[Accuracy, ...]:
    if not isinstance(table, Mapping):
        return ()
    rows = []
    for task in sorted(table, key=lambda t: (t != "all", t)):
        entry = table[task] if isinstance(table[task], Mapping) else {}
        low, high = _interval(entry) if "low" in entry else _interval(intervals.get(prefix + task))
        correct, total = number(entry.get("correct")), number(entry.get("total"))
        rows.append(Accuracy(str(task), number(entry.get("accuracy")), None if correct is None else int(correct),
                             None if total is None else int(total), low, high, confidence))
    return tuple(rows)


def _benchmarks(data: Mapping[str, Any] | None) -> tuple[Benchmark, ...] | None:
    if not isinstance(data, Mapping) or not isinstance(data.get("tasks"), Mapping):
        return None
    rows = []
    for task, entry in sorted(data["tasks"].items()):
        value, stderr, chance = number(entry.get("value")), number(entry.get("stderr")), number(entry.get("chance"))
        above = entry.get("above_chance")
        if not isinstance(above, bool):  # the file's own flag first; else its rule, if it has the numbers
            above = None if None in (value, stderr, chance) else value - 2 * stderr > chance
        samples = number(entry.get("samples"))
        rows.append(Benchmark(str(task), str(entry.get("metric", "")), value, stderr, chance, above,
                              None if samples is None else int(samples)))
    return tuple(rows)
