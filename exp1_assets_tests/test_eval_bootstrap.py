"""Bootstrap confidence intervals: seeded, equal to a plain loop, exact for corpus BLEU/chrF, calibrated."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import sacrebleu

from exp1_assets.evaluation import metrics
from exp1_assets.evaluation.bootstrap import Bootstrap, Interval, resample_indices
from exp1_assets.evaluation.evaluate_job import EvalSpec
from exp1_assets.evaluation.thresholds import Thresholds

WORDS = "the cat sat on a mat and 12 + 7 = 19 is odd , a fox climbs the old tree .".split()


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25))) for _ in range(n)]


def boot_with(*, seed: int = 0, resamples: int = 1000, confidence: float = 0.95) -> Bootstrap:
    return Bootstrap(resamples=resamples, confidence=confidence, seed=seed)


def noisy_copies(texts: list[str], seed: int) -> list[str]:
    """Hypotheses that share much, not all, with their references: BLEU well above zero and below 100."""
    rng = random.Random(seed)
    return [" ".join(w if rng.random() > 0.3 else rng.choice(WORDS) for w in text.split()) for text in texts]


def plain_percentile(values: list[float], q: float) -> float:
    """numpy's default ("linear") percentile, written out: interpolate at q * (n - 1) of the sorted values."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def plain_interval(estimates: list[float], confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    return plain_percentile(estimates, tail), plain_percentile(estimates, 1 - tail)


def test_the_same_seed_gives_the_same_interval_and_another_seed_a_different_one():
    values = np.random.default_rng(3).random(50)
    first, again = boot_with(seed=7).mean(values), boot_with(seed=7).mean(values)
    other = boot_with(seed=8).mean(values)
    assert first == again and first != other
    assert np.array_equal(resample_indices(50, resamples=1000, seed=7), resample_indices(50, resamples=1000, seed=7))


def test_the_interval_contains_the_estimate_and_narrows_with_more_rows():
    rng = np.random.default_rng(0)
    few, many = rng.random(30), rng.random(3000)
    boot = boot_with(seed=0)
    narrow, wide = boot.mean(many), boot.mean(few)
    assert wide.contains(float(few.mean())) and narrow.contains(float(many.mean()))
    # The width of a mean's interval shrinks like 1/sqrt(n): 10x the rows is about a third.
    assert (narrow.high - narrow.low) < 0.5 * (wide.high - wide.low)
    nll, tokens = rng.random(40) * 50, rng.integers(10, 30, 40)
    perplexity = math.exp(nll.sum() / tokens.sum())
    assert boot.ratio(nll, tokens, transform=np.exp).contains(perplexity)


def test_the_intervals_equal_a_plain_python_loop_over_the_same_index_matrix():
    rng = np.random.default_rng(1)
    n, seed, confidence = 40, 5, 0.9
    boot = boot_with(resamples=300, confidence=confidence, seed=seed)
    indices = resample_indices(n, resamples=300, seed=seed).tolist()

    values = [float(v) for v in rng.random(n)]
    loop = [sum(values[i] for i in resample) / n for resample in indices]
    got = boot.mean(values)
    assert (got.low, got.high) == pytest.approx(plain_interval(loop, confidence), abs=1e-12)

    nll, tokens = [float(v) for v in rng.random(n) * 40], [int(t) for t in rng.integers(0, 20, n)]
    loop = [math.exp(sum(nll[i] for i in r) / sum(tokens[i] for i in r)) for r in indices]
    got = boot.ratio(nll, tokens, transform=np.exp)
    assert (got.low, got.high) == pytest.approx(plain_interval(loop, confidence), rel=1e-12)

    refs = sentences(n, 2)
    hyps = noisy_copies(refs, 1)
    loop = [sacrebleu.corpus_bleu([hyps[i] for i in r], [[refs[i] for i in r]]).score for r in indices]
    bleu = metrics.corpus_statistics(hyps, refs)["bleu"]
    got = boot.corpus_score(bleu.rows, bleu.score)
    assert (got.low, got.high) == pytest.approx(plain_interval(loop, confidence), abs=1e-9)


def test_summed_row_statistics_give_exactly_sacrebleus_corpus_bleu_and_chrf():
    refs = sentences(200, 4)
    hyps = noisy_copies(refs, 3)
    statistics = metrics.corpus_statistics(hyps, refs)
    bleu, chrf = (statistics[k] for k in ("bleu", "chrf"))
    assert bleu.score(np.sum(bleu.rows, axis=0).tolist()) == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert chrf.score(np.sum(chrf.rows, axis=0).tolist()) == pytest.approx(
        sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    scores = metrics.corpus_bleu_chrf(hyps, refs)  # the report's numbers, from the same statistics
    assert scores["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert scores["chrf"] == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert 5 < scores["bleu"] < 60  # a non-trivial case: neither all wrong nor all right
    boot = boot_with(seed=0)
    assert boot.corpus_score(bleu.rows, bleu.score).contains(scores["bleu"])
    assert boot.corpus_score(chrf.rows, chrf.score).contains(scores["chrf"])


def test_a_95_percent_interval_of_a_bernoulli_mean_covers_p_about_95_percent_of_the_time():
    rng, p = np.random.default_rng(2024), 0.3
    boot = boot_with(resamples=500, seed=1)
    covered = [boot.mean(rng.random(200) < p).contains(p) for _ in range(200)]
    assert 0.88 <= sum(covered) / len(covered) <= 0.99


def test_too_few_rows_or_an_empty_resample_give_no_interval_and_settings_are_validated():
    boot = boot_with()
    assert all(math.isnan(b) for b in (*boot.mean([]).as_dict().values(), *boot.mean([0.4]).as_dict().values()))
    assert math.isnan(boot.ratio([1.0, 2.0], [0, 0]).low)  # no scored token anywhere: not 0/0 = "anything"
    assert not Interval(float("nan"), float("nan")).contains(0.0)
    with pytest.raises(ValueError, match="resamples: must be an integer >= 100"):
        boot_with(resamples=50)
    paths = dict(checkpoint_path="c", validation_path="v", test_path="t", output_dir="o", run_dir="r")
    with pytest.raises(ValueError, match="bootstrap_resamples: must be an integer >= 100, got 99"):
        EvalSpec(**paths, bootstrap_resamples=99)
    with pytest.raises(ValueError, match="bootstrap_confidence: must be a number in"):
        EvalSpec(**paths, bootstrap_confidence=1.0)
    spec = EvalSpec(**paths, bootstrap_resamples=200, bootstrap_confidence=0.9, seed=4)
    assert EvalSpec.from_json(spec.to_json()) == spec
    assert spec.bootstrap() == Bootstrap(resamples=200, confidence=0.9, seed=4)


def test_each_check_says_whether_the_whole_interval_clears_its_bar():
    from exp1_assets.defs.evaluation_assets import _check_metadata

    bars = Thresholds(perplexity_below=20.0, rouge_l_above=0.3)
    values = {"perplexity": 18.0, "rouge_l": 0.33}
    clear = bars.judge(values, intervals={"perplexity": {"low": 16.0, "high": 19.5},
                                          "rouge_l": {"low": 0.31, "high": 0.36}})
    straddle = bars.judge(values, intervals={"perplexity": {"low": 16.0, "high": 21.0},
                                             "rouge_l": {"low": 0.29, "high": 0.36}})
    for name in ("perplexity_below_threshold", "rouge_l_above_threshold"):
        assert clear[name]["passed"] and straddle[name]["passed"]  # the point estimate passes both times
        assert clear[name]["interval_clears"] is True and straddle[name]["interval_clears"] is False
    assert _check_metadata(clear["perplexity_below_threshold"]) == {
        "value": 18.0, "threshold": 20.0, "ci_low": 16.0, "ci_high": 19.5, "interval_clears": True}
    assert _check_metadata(straddle["rouge_l_above_threshold"]) == {
        "value": 0.33, "threshold": 0.3, "ci_low": 0.29, "ci_high": 0.36, "interval_clears": False}
    unknown = bars.judge(values, intervals={"perplexity": {"low": None, "high": None}})
    assert [(c["low"], c["high"], c["interval_clears"]) for c in unknown.values()] == [(None, None, False)] * 2
    metadata = _check_metadata(unknown["rouge_l_above_threshold"])
    assert math.isnan(metadata["ci_low"]) and metadata["interval_clears"] is False
