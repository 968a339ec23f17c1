"""Scaling trend: final validation loss against parameters, fitted as a power law (pure Python).

    L(N) = a * N^(-alpha)

fitted by ordinary least squares on ln L = ln a - alpha * ln N, the form scaling-law papers
report for loss against model size at a fixed amount of data (Kaplan et al. 2020). R^2 is that
regression's, in log-log space. No irreducible-loss term (L = E + a * N^(-alpha)): the CPU ladder
has four sizes, and a third free parameter would leave one degree of freedom to judge the fit by.
The residuals say whether the curve bends toward such a floor (the largest sizes above the line).

At a fixed number of training tokens the law holds only while the data is not the limit. Below
~20 tokens per parameter (Hoffmann et al. 2022's compute-optimal ratio) the larger sizes gain
less and less from their parameters, so the summary states each size's tokens per parameter and
says when the trend is data-limited rather than reading its exponent as a model-size law.

A size enters the fit when its final validation loss and its parameter count are finite and
positive; the rest are listed with the reason. With fewer than `MIN_SIZES_FOR_FIT` such sizes
(or fewer distinct parameter counts) there is no fit, and the reason says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MIN_SIZES_FOR_FIT = 3
"""Fewest sizes a power law is fitted to: two points always lie on a line, so a third is the first test."""
COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER = 20.0
"""Training tokens per parameter at the compute-optimal point (Chinchilla); fewer: the size is data-limited."""


@dataclass(frozen=True)
class ScalingPoint:
    """One size's coordinates in the fit."""

    size: str
    """The size's registry key."""
    parameters: float
    """Its exact parameter count (N)."""
    loss: float
    """Its final validation loss (L, nats per token)."""
    tokens: float | None = None
    """Training tokens it saw (D); None when the training result does not say."""

    def __post_init__(self) -> None:
        for name in ("parameters", "loss") + (("tokens",) if self.tokens is not None else ()):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"ScalingPoint {self.size!r}: {name} must be finite and > 0, got {value!r}")


@dataclass(frozen=True)
class PowerLawFit:
    """L = a * N^(-alpha), least squares in log-log space."""

    a: float
    """The loss the law gives at N = 1."""
    alpha: float
    """The exponent: loss falls by a factor 2^alpha when the parameters double."""
    r_squared: float
    """Coefficient of determination of ln L on ln N (1.0: every point on the line)."""
    points: tuple[ScalingPoint, ...]
    """The sizes the law was fitted to."""

    @property
    def n(self) -> int:
        """How many sizes the law was fitted to."""
        return len(self.points)

    def predict(self, parameters: float) -> float:
        """The fitted loss at `parameters`."""
        return self.a * parameters ** (-self.alpha)

    def residuals(self) -> dict[str, dict[str, float]]:
        """Per size: observed and predicted loss, their difference (nats) and log ratio (what was minimized)."""
        return {p.size: {"observed": p.loss, "predicted": self.predict(p.parameters),
                         "residual": p.loss - self.predict(p.parameters),
                         "log_residual": math.log(p.loss / self.predict(p.parameters))}
                for p in self.points}

    def describe(self) -> str:
        """The law in one line, as the reports state it."""
        return (f"L = {self.a:.4g} * N^(-{self.alpha:.4f}) (least squares in log-log space, "
                f"R^2 = {self.r_squared:.4f}, n = {self.n} sizes)")


def fit_power_law(points: Sequence[ScalingPoint]) -> PowerLawFit:
    """Least-squares fit of ln L = ln a - alpha ln N.

    Exact synthetic data (L = 20 N^-0.3) gives back a and alpha:

    >>> pts = [ScalingPoint(size=f"s{n:g}", parameters=n, loss=20 * n ** -0.3) for n in (1e6, 4e6, 2e7)]
    >>> fit = fit_power_law(pts)
    >>> round(fit.a, 6), round(fit.alpha, 6), round(fit.r_squared, 6), fit.n
    (20.0, 0.3, 1.0, 3)
    >>> round(fit.residuals()["s4e+06"]["residual"], 12)
    0.0
    >>> fit_power_law(pts[:2])
    Traceback (most recent call last):
    ...
    ValueError: points: 2 sizes; a power-law fit needs at least 3
    """
    if len(points) < MIN_SIZES_FOR_FIT:
        raise ValueError(f"points: {len(points)} sizes; a power-law fit needs at least {MIN_SIZES_FOR_FIT}")
    xs = [math.log(p.parameters) for p in points]
    ys = [math.log(p.loss) for p in points]
    if len(set(xs)) < 2:
        raise ValueError("points: every size has the same parameter count; no slope to fit")
    x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - x_mean) ** 2 for x in xs)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys)) / sxx
    intercept = y_mean - slope * x_mean
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - y_mean) ** 2 for y in ys)
    # Equal losses at every size: the flat line explains them exactly.
    r_squared = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return PowerLawFit(a=math.exp(intercept), alpha=-slope, r_squared=r_squared, points=tuple(points))


def scaling_points(rows: Sequence[Mapping[str, Any]]) -> tuple[list[ScalingPoint], dict[str, str]]:
    """The comparison rows usable in the fit (smallest first), and why each other row is not.

    >>> points, excluded = scaling_points([
    ...     {"size": "a", "parameters": 1e6, "final_val_loss": 2.0},
    ...     {"size": "b", "parameters": 2e6, "final_val_loss": float("nan")},
    ...     {"size": "c", "parameters": float("nan"), "final_val_loss": 1.5}])
    >>> [p.size for p in points], excluded
    (['a'], {'b': 'no finite final validation loss', 'c': 'no parameter count'})
    """
    points, excluded = [], {}
    for row in rows:
        parameters, loss = _number(row.get("parameters")), _number(row.get("final_val_loss"))
        if not (math.isfinite(parameters) and parameters > 0):
            excluded[row["size"]] = "no parameter count"
        elif not (math.isfinite(loss) and loss > 0):
            excluded[row["size"]] = "no finite final validation loss"
        else:
            tokens = _number(row.get("tokens_trained"))
            points.append(ScalingPoint(size=row["size"], parameters=parameters, loss=loss,
                                       tokens=tokens if math.isfinite(tokens) and tokens > 0 else None))
    return sorted(points, key=lambda p: p.parameters), excluded


def data_limit_note(points: Sequence[ScalingPoint]) -> str | None:
    """Why the trend may flatten: the sizes trained on fewer tokens per parameter than compute-optimal.

    None when any size's token count is unknown or every size had enough data.

    >>> pts = [ScalingPoint(size="s", parameters=1e6, loss=1.2, tokens=6e5),
    ...        ScalingPoint(size="m", parameters=1.6e7, loss=1.0, tokens=6e5)]
    >>> data_limit_note(pts)
    'data-limited: every size saw 600,000 training tokens, 0.037-0.6 per parameter against ~20 for compute-optimal training'
    >>> data_limit_note([ScalingPoint(size="s", parameters=1e6, loss=1.2, tokens=3e7)]) is None
    True
    """
    if not points or any(p.tokens is None for p in points):
        return None
    ratios = sorted(p.tokens / p.parameters for p in points)
    if ratios[0] >= COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER:
        return None
    tokens = {p.tokens for p in points}
    saw = f"every size saw {int(next(iter(tokens))):,} training tokens" if len(tokens) == 1 else \
        f"the sizes saw {int(min(tokens)):,}-{int(max(tokens)):,} training tokens"
    return (f"data-limited: {saw}, {ratios[0]:.2g}-{ratios[-1]:.2g} per parameter against "
            f"~{COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER:g} for compute-optimal training")


def scaling_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """JSON-ready: the fit (a, alpha, R^2, n, residuals per size) or, without one, the reason.

    >>> rows = [{"size": "x", "parameters": 1e6, "final_val_loss": 2.0},
    ...         {"size": "y", "parameters": 4e6, "final_val_loss": 1.5}]
    >>> summary = scaling_summary(rows)
    >>> summary["fit"], summary["reason"]
    (None, '2 sizes with a validation loss; a power-law fit needs at least 3')
    """
    points, excluded = scaling_points(rows)
    base = {"law": "L = a * N^(-alpha)", "min_sizes": MIN_SIZES_FOR_FIT, "excluded": excluded,
            "sizes": [p.size for p in points], "data_note": data_limit_note(points),
            "tokens_per_parameter": {p.size: p.tokens / p.parameters for p in points if p.tokens is not None}}
    if len(points) < MIN_SIZES_FOR_FIT:
        counted = f"{len(points)} size{'' if len(points) == 1 else 's'} with a validation loss"
        return {**base, "fit": None,
                "reason": f"{counted}; a power-law fit needs at least {MIN_SIZES_FOR_FIT}"}
    if len({p.parameters for p in points}) < 2:
        return {**base, "fit": None, "reason": "every size has the same parameter count; no slope to fit"}
    fit = fit_power_law(points)
    return {**base, "reason": None,
            "fit": {"a": fit.a, "alpha": fit.alpha, "r_squared": fit.r_squared, "n": fit.n,
                    "statement": fit.describe(), "residuals": fit.residuals()}}


def scaling_metadata(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The fit as flat metadata: its statement (or why there is none), a, alpha, R^2, n, residuals.

    >>> scaling_metadata({"fit": None, "reason": "1 size with a validation loss; a power-law fit needs at least 3"})
    {'scaling_fit': 'no fit: 1 size with a validation loss; a power-law fit needs at least 3'}
    """
    fit = summary["fit"]
    note = {"scaling_data_note": summary["data_note"]} if summary.get("data_note") else {}
    if fit is None:
        return {"scaling_fit": f"no fit: {summary['reason']}", **note}
    return {**note, "scaling_fit": fit["statement"], "scaling_a": float(fit["a"]), "scaling_alpha": float(fit["alpha"]),
            "scaling_r_squared": float(fit["r_squared"]), "scaling_n": int(fit["n"]),
            "scaling_residuals": {size: r["residual"] for size, r in fit["residuals"].items()}}


def fitted_curve(summary: Mapping[str, Any], *, parameters: Sequence[float]) -> list[float]:
    """The fitted loss at each of `parameters` (for the plot); empty without a fit.

    >>> fitted_curve({"fit": {"a": 20.0, "alpha": 0.5}}, parameters=[100.0, 400.0])
    [2.0, 1.0]
    >>> fitted_curve({"fit": None}, parameters=[100.0])
    []
    """
    fit = summary.get("fit")
    if not fit:
        return []
    return [fit["a"] * n ** (-fit["alpha"]) for n in parameters]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")
