"""The report cards' data and words: what a card holds, and how its verdict reads.

Pure data and formatting (doctested); `report_card` builds these from the artifacts' JSON, and
`report_card_render` lays them out as Markdown and HTML.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

NOT_MEASURED = "not measured"
# The size registry's roles (sizes.SizeRole) as a card states them: only "plan" is the research plan's.
ROLE_WORDS = {"plan": "one of the research plan's sizes",
              "debug": "the small size that runs the whole graph on a CPU, not a research plan size",
              "ladder": "the CPU scaling ladder, not a research plan size"}
# check name in report.json -> (label, metric key, passing side, decimals shown, `Thresholds` field)
BARS = (("perplexity_below_threshold", "perplexity", "perplexity", "<", 2, "perplexity_below"),
        ("rouge_l_above_threshold", "ROUGE-L", "rouge_l", ">", 3, "rouge_l_above"))
# metric key -> (label, decimals shown); the evaluation's headline numbers, in reading order
METRICS = (("perplexity", "perplexity (assistant tokens)", 2), ("bits_per_byte", "bits per byte", 3),
           ("rouge1", "ROUGE-1", 3), ("rouge2", "ROUGE-2", 3), ("rouge_l", "ROUGE-L", 3),
           ("bleu", "BLEU", 1), ("chrf", "chrF", 1))


@dataclass(frozen=True)
class Measure:
    """One number with its interval (None: not measured / no interval)."""

    label: str
    value: float | None
    low: float | None = None
    high: float | None = None
    digits: int = 3

    def text(self, *, ci: str = "95% CI") -> str:
        if self.value is None:
            return NOT_MEASURED
        interval = f" ({ci} {self.low:.{self.digits}f}–{self.high:.{self.digits}f})" if self.has_interval else ""
        return f"{self.value:.{self.digits}f}{interval}"

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None


@dataclass(frozen=True)
class Bar:
    """One of the experiment's bars (check) as a report judged it."""

    measure: Measure
    operator: Literal["<", ">"]
    threshold: float
    passed: bool
    """The point estimate is on the passing side (the asset check's result)."""
    interval_clears: bool | None
    """The whole interval is on the passing side; None without an interval."""

    @property
    def status(self) -> Literal["not_measured", "misses", "met_without_interval", "clears", "point_only"]:
        if self.measure.value is None:
            return "not_measured"
        if not self.passed:
            return "misses"
        if self.interval_clears is None:
            return "met_without_interval"
        return "clears" if self.interval_clears else "point_only"


@dataclass(frozen=True)
class Accuracy:
    """Share of correct answers for one task (or "all"), with its interval when measured."""

    task: str
    accuracy: float | None
    correct: int | None
    total: int | None
    low: float | None = None
    high: float | None = None
    confidence: float = 0.95
    """The interval's confidence level (the report's bootstrap confidence)."""

    def text(self) -> str:
        """The accuracy and its interval in words; when every answer agrees, the exact one-sided bound.

        A bootstrap of 0 of n right resamples only zeros, so its interval is the point 0-0%, which
        reads as certainty. The exact (Clopper-Pearson) bound says what n answers can rule out.

        >>> Accuracy("all", 0.12, 36, 300, 0.096, 0.14).text()
        '12% (95% CI 9.6–14%)'
        >>> Accuracy("all", 0.0, 0, 86, 0.0, 0.0).text()
        '0% (0 of 86: the bootstrap interval is a point; exact 95% bound: below 3.4%)'
        """
        if self.accuracy is None:
            return NOT_MEASURED
        if self.low is None or self.high is None:
            return f"{percent(self.accuracy)} (no interval measured)"
        if self.low == self.high and self.total and self.correct in (0, self.total):
            bound = 1 - (1 - self.confidence) ** (1 / self.total)  # P(0 of n | rate = bound) = 1 - confidence
            side = f"below {percent(bound)}" if self.correct == 0 else f"above {percent(1 - bound)}"
            return (f"{percent(self.accuracy)} ({self.correct} of {self.total}: the bootstrap interval is a point; "
                    f"exact {100 * self.confidence:g}% bound: {side})")
        return f"{percent(self.accuracy)} ({100 * self.confidence:g}% CI {percent_range(self.low, self.high)})"


@dataclass(frozen=True)
class Benchmark:
    """One lm-evaluation-harness task: accuracy, its stderr and the chance level."""

    task: str
    metric: str
    value: float | None
    stderr: float | None
    chance: float | None
    above_chance: bool | None
    """value - 2 stderr > chance; None when the file gives neither the flag nor the numbers for it."""
    samples: int | None


@dataclass(frozen=True)
class SizeCard:
    """Everything one size's card shows; `verdict` is the plain-words summary."""

    size: str
    """The size's partition key."""
    role: str | None
    """The size registry's role ("plan", "debug", "ladder"); None when not given."""
    note: str | None
    """What the size registry says about this size (e.g. its name vs its computed parameters)."""
    parameters: float | None
    """From train_result.json (`param_count`), unless given."""
    tokens_trained: float | None
    wall_time_s: float | None
    final_val_loss: float | None
    """Validation loss after training (train_result.json `val_loss_after`)."""
    bar_owner: Literal["the plan's", "this run's"]
    """Whose bars the report was judged by: the plan's defaults, or a run's own thresholds."""
    ci: str
    """How intervals are named, from the report's bootstrap confidence, e.g. "95% CI"."""
    bars: tuple[Bar, ...]
    metrics: tuple[Measure, ...]
    """The headline numbers (`METRICS`), each with its interval where the report has one."""
    exact: tuple[Accuracy, ...]
    """Exact-answer accuracy, "all" first; empty: not measured."""
    probes: tuple[Accuracy, ...]
    benchmarks: tuple[Benchmark, ...] | None
    """None: no benchmarks.json for this size."""
    links: tuple[tuple[str, str | None], ...]
    """(label, href relative to the card); href None: that artifact does not exist yet."""
    evaluated: bool
    """A report.json was there (the card of a size without one says so)."""
    intervals_from: str | None
    """How the intervals were computed, in words; None when the report has no bootstrap block."""
    verdict: str


@dataclass(frozen=True)
class ComparisonCard:
    """All sizes' cards side by side, with the scaling fit (or why there is none)."""

    cards: tuple[SizeCard, ...]
    scaling: str
    """The fit in words, or why there is none."""
    residuals: tuple[tuple[str, float | None, float | None, float | None], ...]
    """Per size in the fit: observed loss, the law's prediction, their difference; empty without a fit."""
    card_dirs: tuple[tuple[str, str], ...]
    """(size, folder of its card relative to this card)."""
    verdict: str


# ---------------------------------------------------------------------------------------------
# Words and numbers
# ---------------------------------------------------------------------------------------------
def percent(x: float) -> str:
    """A share as a percentage: one decimal below 10%, whole above.

    >>> [percent(v) for v in (0.11606, 0.0116, 0.0, 1.0)]
    ['12%', '1.2%', '0%', '100%']
    """
    pct = 100 * x
    return f"{pct:.1f}%" if 0 < abs(pct) < 9.95 else f"{pct:.0f}%"


def percent_range(low: float, high: float) -> str:
    """An interval of shares, one percent sign.

    >>> percent_range(0.0995, 0.14)
    '10–14%'
    """
    return f"{percent(low)[:-1]}–{percent(high)}"


def and_join(words: Sequence[str]) -> str:
    """Words as a sentence lists them.

    >>> [and_join(w) for w in (["a"], ["a", "b"], ["a", "b", "c"])]
    ['a', 'a and b', 'a, b and c']
    """
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def duration(seconds: float) -> str:
    """Wall time as a person reads it.

    >>> [duration(s) for s in (12.34, 196.07, 7500.0)]
    ['12.3 s', '3 min 16 s', '2 h 05 min']
    """
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def number(value: Any) -> float | None:
    """A finite number, else None (JSON null, NaN, text, booleans are not measurements).

    >>> [number(v) for v in (2, 0.5, None, float("nan"), True, "3")]
    [2.0, 0.5, None, None, None, None]
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def bars_clause(bars: Sequence[Bar], *, owner: str, ci: str) -> str:
    """Which bars are met, how firmly, and by what interval (the first part of a verdict).

    >>> ppl = Bar(Measure("perplexity", 2.43, 2.38, 2.49, digits=2), "<", 20.0, True, True)
    >>> rouge = Bar(Measure("ROUGE-L", 0.31, 0.28, 0.35, digits=2), ">", 0.3, True, False)
    >>> for clause in bars_clause([ppl, rouge], owner="the plan's", ci="95% CI").split("; "):
    ...     print(clause)
    meets the plan's perplexity bar by the whole 95% CI (2.38–2.49 < 20)
    meets the plan's ROUGE-L bar on the point estimate (0.31), but its 95% CI 0.28–0.35 crosses 0.3
    """
    def limit(b: Bar) -> str:
        return f"{b.operator} {b.threshold:g}"

    def value(b: Bar) -> str:
        return f"{b.measure.value:.{b.measure.digits}f}"

    def interval(b: Bar) -> str:
        return f"{b.measure.low:.{b.measure.digits}f}–{b.measure.high:.{b.measure.digits}f}"

    def group(status: str) -> tuple[list[Bar], str]:
        chosen = [b for b in bars if b.status == status]
        plural = "s" if len(chosen) > 1 else ""
        return chosen, f"{owner} {and_join([b.measure.label for b in chosen])} bar{plural}" if chosen else ""

    def each(chosen: list[Bar], text) -> str:  # "label x < t" for several bars, "x < t" for one
        return ", ".join((f"{b.measure.label} " if len(chosen) > 1 else "") + text(b) for b in chosen)

    parts = []
    clears, name = group("clears")
    if clears:
        parts.append(f"meets {name} by the whole {ci} ({each(clears, lambda b: f'{interval(b)} {limit(b)}')})")
    unsure, name = group("met_without_interval")
    if unsure:
        parts.append(f"meets {name} on the point estimate, without an interval "
                     f"({each(unsure, lambda b: f'{value(b)} {limit(b)}')})")
    for b in bars:
        if b.status == "point_only":
            parts.append(f"meets {owner} {b.measure.label} bar on the point estimate ({value(b)}), "
                         f"but its {ci} {interval(b)} crosses {b.threshold:g}")
        elif b.status == "misses":
            where = f"{value(b)}, {ci} {interval(b)}" if b.measure.has_interval else value(b)
            parts.append(f"misses {owner} {b.measure.label} bar of {limit(b)} ({where})")
        elif b.status == "not_measured":
            parts.append(f"{b.measure.label} {NOT_MEASURED}")
    return "; ".join(parts)


def benchmarks_clause(benchmarks: Sequence[Benchmark] | None) -> str:
    """Benchmark accuracy against chance, in words (each task judged by value - 2 stderr > chance).

    >>> benchmarks_clause(None)
    'benchmarks not measured'
    >>> b = Benchmark("t", "acc", 0.3, 0.01, 0.25, True, 100)
    >>> benchmarks_clause([b, Benchmark("u", "acc", 0.26, 0.02, 0.25, False, 100)])
    'benchmarks above chance on 1 of 2 tasks'
    """
    if not benchmarks:
        return f"benchmarks {NOT_MEASURED}"
    judged = [b for b in benchmarks if b.above_chance is not None]
    if not judged:
        return f"benchmarks measured on {len(benchmarks)} tasks, none with a chance level to compare with"
    above = sum(1 for b in judged if b.above_chance)
    unjudged = len(benchmarks) - len(judged)
    tail = f" ({unjudged} more without a chance level)" if unjudged else ""
    if above == 0:
        return f"benchmarks at chance{tail}"
    return f"benchmarks above chance on {above} of {len(judged)} tasks{tail}"


def scaling_text(fit: Mapping[str, Any] | None, *, reason: str | None) -> str:
    """The loss-vs-parameters fit L = a * N^-alpha in words, or why there is none.

    `fit` holds "a", "alpha", and optionally "r_squared" (or "r2") and "n".

    >>> scaling_text({"a": 12.0, "alpha": 0.08, "r_squared": 0.97, "n": 4}, reason=None)
    'final validation loss ≈ 12 · N^-0.080 (R² 0.970 over 4 sizes)'
    >>> scaling_text(None, reason="2 sizes; a power law needs at least 3")
    'no scaling fit: 2 sizes; a power law needs at least 3'
    """
    fit = fit or {}
    a, alpha, n = (number(fit.get(key)) for key in ("a", "alpha", "n"))
    r2 = number(fit.get("r_squared", fit.get("r2")))
    if a is not None and alpha is not None:
        details = ([f"R² {r2:.3f}"] if r2 is not None else []) + ([f"over {int(n)} sizes"] if n else [])
        law = f"final validation loss ≈ {a:.3g} · N^{-alpha:.3f}"
        return law + (f" ({' '.join(details)})" if details else "")
    return f"no scaling fit: {reason}" if reason else "no scaling fit reported"
