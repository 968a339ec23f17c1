"""The experiment's bars, in one place: the checks, the reports and the size comparison read these.

The research plan asks for validation perplexity below 20 and ROUGE-L of greedy answers above 0.3.
A run may judge by other bars (`evaluation_report` config); each report records the bars it was
judged by, and the size comparison judges every size by the bars its own report recorded.
A check passes on the point estimate; it also says whether the metric's whole confidence interval
clears the bar (`interval_clears`), since a number just past a bar may be noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    """The research plan's bars for one evaluated model."""

    perplexity_below: float = 20.0
    """Validation perplexity on assistant tokens must be below this."""
    rouge_l_above: float = 0.3
    """ROUGE-L of greedy answers on test prompts must be above this."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"thresholds.{name}: must be a finite number, got {value!r}")
        if self.perplexity_below <= 1:
            raise ValueError(f"thresholds.perplexity_below: must be > 1 (perplexity is >= 1), got {self.perplexity_below}")
        if not 0 <= self.rouge_l_above < 1:
            raise ValueError(f"thresholds.rouge_l_above: must be in [0, 1), got {self.rouge_l_above}")

    def judge(
        self, metrics: Mapping[str, Any], *, intervals: Mapping[str, Any] | None = None
    ) -> dict[str, dict[str, Any]]:
        """The checks block of a report: per check, the point estimate's verdict and the interval's.

        `passed` judges the point estimate (a missing or NaN metric fails: NaN compares False).
        `low`/`high` are the metric's confidence interval (report["intervals"]; None when absent)
        and `interval_clears` says whether the whole interval lies on the passing side of the
        bar: perplexity's upper bound below it, ROUGE-L's lower bound above it. Without an
        interval nothing is known to clear, so it is False.

        >>> Thresholds().judge({"perplexity": 2.4, "rouge_l": float("nan")})["rouge_l_above_threshold"]["passed"]
        False
        >>> Thresholds(perplexity_below=2.0).judge({"perplexity": 2.4})["perplexity_below_threshold"]
        {'passed': False, 'value': 2.4, 'threshold': 2.0, 'low': None, 'high': None, 'interval_clears': False}
        >>> checks = Thresholds().judge({"perplexity": 19.0, "rouge_l": 0.35},
        ...                             intervals={"perplexity": {"low": 17.5, "high": 20.5},
        ...                                        "rouge_l": {"low": 0.31, "high": 0.39}})
        >>> [(c["passed"], c["interval_clears"]) for c in checks.values()]
        [(True, False), (True, True)]
        """
        intervals = intervals or {}
        ppl, ppl_low, ppl_high = _with_interval(metrics, intervals, "perplexity")
        rouge_l, rouge_low, rouge_high = _with_interval(metrics, intervals, "rouge_l")
        ppl_clears = ppl_high is not None and ppl_high < self.perplexity_below
        rouge_clears = rouge_low is not None and rouge_low > self.rouge_l_above
        return {
            "perplexity_below_threshold": {"passed": bool(ppl < self.perplexity_below), "value": ppl,
                                           "threshold": self.perplexity_below, "low": ppl_low, "high": ppl_high,
                                           "interval_clears": ppl_clears},
            "rouge_l_above_threshold": {"passed": bool(rouge_l > self.rouge_l_above), "value": rouge_l,
                                        "threshold": self.rouge_l_above, "low": rouge_low, "high": rouge_high,
                                        "interval_clears": rouge_clears},
        }

    @classmethod
    def recorded_in(cls, report: Mapping[str, Any]) -> "Thresholds":
        """The bars a report was judged by (reports written before they were recorded: the defaults)."""
        recorded = report.get("thresholds")
        return cls(**recorded) if isinstance(recorded, Mapping) else cls()


# The checks' names and what they say, for the asset's check specs.
CHECK_DESCRIPTIONS = {
    "perplexity_below_threshold": "Perplexity on validation assistant tokens < threshold (plan: 20)",
    "rouge_l_above_threshold": "ROUGE-L of greedy answers on test prompts > threshold (plan: 0.3)",
}


def _with_interval(metrics: Mapping[str, Any], intervals: Mapping[str, Any], name: str) -> tuple:
    """The metric's value and its interval's bounds (None where there is no finite bound)."""
    interval = intervals.get(name)
    bounds = [_number(interval.get(side)) if isinstance(interval, Mapping) else math.nan for side in ("low", "high")]
    low, high = (b if math.isfinite(b) else None for b in bounds)
    return _number(metrics.get(name)), low, high


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")
