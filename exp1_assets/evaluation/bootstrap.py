"""Seeded percentile-bootstrap confidence intervals for the evaluation's headline numbers.

One resample draws `n` rows with replacement; the index matrix of all resamples is
`numpy.random.default_rng(seed).integers(0, n, size=(resamples, n))`, so anyone can rebuild it
from the report's `bootstrap` block. Every statistic here is a function of *column sums* of a
per-row table, so a resample is a count vector (how often each row was drawn) and all resamples'
sums are one matrix product: exact, and fast enough for 1000 rows x 1000 resamples.
- a mean of per-row values (ROUGE, exact answers): resampled sum / n;
- a ratio of sums (perplexity = exp(sum NLL / sum tokens) over packed validation blocks: the
  block is the unit, since a block packs several conversations and is what was scored);
- a corpus score (BLEU, chrF): per-row sufficient statistics are summed and the corpus score is
  recomputed from the sums, as sacrebleu's own paired bootstrap does.

Why the percentile interval: it needs no variance formula (corpus BLEU and chrF have none), it
respects monotone transforms (the perplexity interval is exp of the mean-NLL interval), and it is
what sacrebleu reports. It is approximate: with few rows the resampled statistic takes few values
and the interval is wide and coarse (and slightly too narrow, by about sqrt((n - 1) / n)). With
fewer than two rows there is no spread to estimate: the interval is NaN (null in JSON).

>>> boot = Bootstrap(resamples=1000, confidence=0.95, seed=0)
>>> interval = boot.mean([1, 0, 1, 1, 0, 1, 1, 0, 1, 1])
>>> interval.low <= 0.7 <= interval.high, interval.high - interval.low > 0.3
(True, True)
>>> boot.mean([0.5]).as_dict()
{'low': nan, 'high': nan}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MIN_RESAMPLES = 100  # fewer leaves a 95% interval's tails resting on two or three resamples


@dataclass(frozen=True)
class Interval:
    """A confidence interval; NaN bounds when it could not be computed."""

    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high}

    def contains(self, value: float) -> bool:
        """
        >>> Interval(1.0, 2.0).contains(2.0), Interval(float("nan"), float("nan")).contains(1.0)
        (True, False)
        """
        return bool(self.low <= value <= self.high)


NO_INTERVAL = Interval(float("nan"), float("nan"))


def resample_indices(n: int, *, resamples: int, seed: int) -> np.ndarray:
    """The (resamples, n) matrix of row indices drawn with replacement; row r is resample r.

    >>> resample_indices(3, resamples=2, seed=0).shape
    (2, 3)
    """
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of the n rows occurs in each resample: (resamples, n) floats.

    >>> resample_counts(np.array([[0, 0, 2], [1, 2, 2]]), 3).tolist()
    [[2.0, 0.0, 1.0], [0.0, 1.0, 2.0]]
    """
    resamples = indices.shape[0]
    offsets = (indices + np.arange(resamples)[:, None] * n).ravel()
    return np.bincount(offsets, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def percentile_interval(estimates: np.ndarray, *, confidence: float) -> Interval:
    """The (1 - confidence) / 2 and (1 + confidence) / 2 quantiles (numpy's linear interpolation).

    A non-finite estimate (e.g. a resample without any scored token) makes the interval NaN
    rather than quietly narrower.

    >>> percentile_interval(np.arange(101.0), confidence=0.5)
    Interval(low=25.0, high=75.0)
    """
    estimates = np.asarray(estimates, dtype=np.float64)
    if estimates.size == 0 or not np.all(np.isfinite(estimates)):
        return NO_INTERVAL
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return Interval(float(low), float(high))


@lru_cache(maxsize=2)  # the reply rows and the blocks; ~8 MB each at 1000 x 1000
def shared_counts(n: int, *, resamples: int, seed: int) -> np.ndarray:
    """`resample_counts` of the seeded index matrix, drawn once per (n, resamples, seed) and shared
    (read-only) by every metric over the same rows: ROUGE, BLEU and chrF of one reply set."""
    counts = resample_counts(resample_indices(n, resamples=resamples, seed=seed), n)
    counts.setflags(write=False)
    return counts


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are drawn: the resample count, the confidence level and the seed.

    No defaults here: the evaluation's own spec owns them (EvalSpec.bootstrap_resamples, ...).
    The same seed and row count give the same index matrix, so metrics over the same rows
    (ROUGE, BLEU and chrF of one set of replies) are resampled together.
    """

    resamples: int
    """Bootstrap resamples per interval (at least MIN_RESAMPLES)."""
    confidence: float
    """Coverage of the two-sided interval, in (0, 1)."""
    seed: int
    """Seed of numpy's default_rng that draws the resample index matrix."""

    def __post_init__(self) -> None:
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) or self.resamples < MIN_RESAMPLES:
            raise ValueError(f"bootstrap resamples: must be an integer >= {MIN_RESAMPLES}, got {self.resamples!r}")
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float)) \
                or not 0 < self.confidence < 1:
            raise ValueError(f"bootstrap confidence: must be a number in (0, 1), got {self.confidence!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"bootstrap seed: must be an integer >= 0, got {self.seed!r}")

    def resampled_sums(self, table: np.ndarray) -> np.ndarray | None:
        """Column sums of a (rows, columns) table in every resample: (resamples, columns).

        None with fewer than two rows (no spread to resample).
        """
        table = np.asarray(table, dtype=np.float64)
        n = table.shape[0]
        if n < 2:
            return None
        return shared_counts(n, resamples=self.resamples, seed=self.seed) @ table

    def mean(self, values: Sequence[float]) -> Interval:
        """Interval of the mean of per-row values (ROUGE F1, 0/1 exact answers)."""
        values = np.asarray(values, dtype=np.float64)
        sums = self.resampled_sums(values[:, None])
        if sums is None:
            return NO_INTERVAL
        return percentile_interval(sums[:, 0] / len(values), confidence=self.confidence)

    def ratio(
        self, numerators: Sequence[float], denominators: Sequence[float],
        *, transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> Interval:
        """Interval of sum(numerators) / sum(denominators), optionally transformed (np.exp for perplexity).

        >>> boot = Bootstrap(resamples=1000, confidence=0.95, seed=1)
        >>> interval = boot.ratio([2.0, 4.0, 6.0], [1, 1, 1], transform=np.exp)
        >>> bool(np.exp(2.0) <= interval.low < np.exp(4.0) < interval.high <= np.exp(6.0))
        True
        """
        table = np.column_stack([np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)])
        sums = self.resampled_sums(table)
        if sums is None:
            return NO_INTERVAL
        with np.errstate(divide="ignore", invalid="ignore"):  # an all-empty resample is NaN, caught below
            estimates = sums[:, 0] / sums[:, 1]
            estimates = np.where(sums[:, 1] > 0, estimates, np.nan)
        return percentile_interval(transform(estimates) if transform else estimates, confidence=self.confidence)

    def corpus_score(self, statistics: Sequence[Sequence[int]], score: Callable[[list[int]], float]) -> Interval:
        """Interval of a corpus metric recomputed from summed per-row sufficient statistics.

        `score` maps one vector of summed statistics to the corpus score (sacrebleu's
        `_compute_score_from_stats` for BLEU and chrF); the sums are whole numbers, passed as ints.

        >>> boot = Bootstrap(resamples=1000, confidence=0.95, seed=0)
        >>> boot.corpus_score([[1, 2], [3, 4], [0, 4]], lambda s: s[0] / s[1]).contains(0.4)
        True
        """
        sums = self.resampled_sums(np.asarray(statistics, dtype=np.float64))
        if sums is None:
            return NO_INTERVAL
        whole = np.rint(sums).astype(np.int64).tolist()  # sums of integer counts: exact in float64
        estimates = np.array([score(row) for row in whole], dtype=np.float64)
        return percentile_interval(estimates, confidence=self.confidence)
