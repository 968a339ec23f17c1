"""Report cards: the verdict's words for each case, the numbers as given, escaping, and the asset."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

from exp1_assets.evaluation.report_card import comparison_card, render_html, render_markdown, size_card, write_card

EVIL = "<script>alert('x')</script> | **b** {0}"
TRAINING = {"size": "tiny", "param_count": 5182976, "tokens_seen": 606336, "wall_time_s": 196.07,
            "val_loss_after": 0.99455}


def check(value: float, threshold: float, *, low: float | None, high: float | None, below: bool) -> dict:
    """A report.json `checks` entry as the contract writes it (independent of Thresholds.judge)."""
    passed = value < threshold if below else value > threshold
    clears = low is not None and (high < threshold if below else low > threshold)
    return {"value": value, "threshold": threshold, "passed": passed, "low": low, "high": high,
            "interval_clears": clears}


def make_report(*, ppl=(2.43, 2.38, 2.49), rouge_l=(0.56, 0.54, 0.58), thresholds=(20.0, 0.3),
                exact=None, with_intervals=True) -> dict:
    """A report.json following the contract: metrics, intervals, bootstrap, checks, per-task blocks."""
    exact = exact or {"all": (116, 965, 0.0995, 0.14), "arithmetic": (1, 86, 0.0, 0.035)}
    low = (lambda interval: interval) if with_intervals else (lambda interval: None)
    metrics = {"perplexity": ppl[0], "bits_per_byte": 0.347, "rouge1": 0.566, "rouge2": 0.368, "rouge_l": rouge_l[0],
               "bleu": 47.29, "chrf": 61.46, "exact_accuracy": exact["all"][0] / exact["all"][1]}
    report = {
        "checkpoint": "/x/model_checkpoint/tiny", "metrics": metrics,
        "thresholds": {"perplexity_below": thresholds[0], "rouge_l_above": thresholds[1]},
        "checks": {
            "perplexity_below_threshold": check(ppl[0], thresholds[0], low=low(ppl[1]), high=low(ppl[2]), below=True),
            "rouge_l_above_threshold": check(rouge_l[0], thresholds[1], low=low(rouge_l[1]), high=low(rouge_l[2]),
                                             below=False)},
        "exact_accuracy": {task: {"accuracy": c / n, "correct": c, "total": n,
                                  **({"low": lo, "high": hi} if with_intervals else {})}
                           for task, (c, n, lo, hi) in exact.items()},
        "probe_accuracy": {"all": {"accuracy": 0.0, "correct": 0, "total": 9}},
    }
    if with_intervals:
        report["intervals"] = {"perplexity": {"low": ppl[1], "high": ppl[2]},
                               "rouge_l": {"low": rouge_l[1], "high": rouge_l[2]},
                               "rouge1": {"low": 0.55, "high": 0.58}, "rouge2": None,
                               "bleu": {"low": 45.0, "high": 49.5}, "chrf": {"low": 60.1, "high": 62.8},
                               "exact_accuracy": {"low": exact["all"][2], "high": exact["all"][3]}}
        report["bootstrap"] = {"resamples": 1000, "confidence": 0.95, "seed": 0,
                               "unit": {"perplexity": "block", "rouge_l": "row"}}
    return report


def benchmark(value: float, stderr: float, chance: float, **extra) -> dict:
    return {"metric": "acc", "value": value, "stderr": stderr, "chance": chance,
            "above_chance": value - 2 * stderr > chance, "samples": 200, "output_type": "multiple_choice", **extra}


def benchmarks(**tasks: dict) -> dict:
    return {"lm_eval_version": "0.4.13", "tasks_requested": list(tasks), "include_path": [], "tasks": tasks,
            "settings": {}}


AT_CHANCE = benchmarks(local_mc=benchmark(0.26, 0.03, 0.25), local_exact=benchmark(0.0, 0.0, 0.0))


# ---------------------------------------------------------------------------------------------
# The verdict, case by case
# ---------------------------------------------------------------------------------------------
def test_every_bar_cleared_by_its_whole_interval_reads_as_met_with_the_intervals():
    card = size_card(size="tiny", report=make_report(), training=TRAINING, benchmarks=AT_CHANCE)
    assert card.verdict == ("meets the plan's perplexity and ROUGE-L bars by the whole 95% CI "
                            "(perplexity 2.38–2.49 < 20, ROUGE-L 0.540–0.580 > 0.3); "
                            "exact answers 12% (95% CI 10–14%); benchmarks at chance")


def test_a_bar_met_on_the_point_estimate_only_says_its_interval_crosses_the_bar():
    card = size_card(size="tiny", report=make_report(rouge_l=(0.31, 0.28, 0.35)), benchmarks=AT_CHANCE)
    assert card.verdict.split("; ")[:2] == [
        "meets the plan's perplexity bar by the whole 95% CI (2.38–2.49 < 20)",
        "meets the plan's ROUGE-L bar on the point estimate (0.310), but its 95% CI 0.280–0.350 crosses 0.3"]
    row = "| ROUGE-L | 0.310 | 0.280–0.350 | > 0.3 | yes | no: the interval crosses the bar |"
    assert row in render_markdown(card)


def test_a_missed_bar_says_by_how_much_and_what_it_needs():
    card = size_card(size="tiny", report=make_report(ppl=(25.0, 22.5, 27.75), rouge_l=(0.21, 0.18, 0.24)))
    assert card.verdict.split("; ")[:2] == [
        "misses the plan's perplexity bar of < 20 (25.00, 95% CI 22.50–27.75)",
        "misses the plan's ROUGE-L bar of > 0.3 (0.210, 95% CI 0.180–0.240)"]


def test_bars_of_a_run_with_its_own_thresholds_are_not_called_the_plans():
    card = size_card(size="tiny", report=make_report(thresholds=(2.0, 0.3)))
    assert card.verdict.split("; ")[:2] == ["meets this run's ROUGE-L bar by the whole 95% CI (0.540–0.580 > 0.3)",
                                            "misses this run's perplexity bar of < 2 (2.43, 95% CI 2.38–2.49)"]


def test_a_report_without_intervals_says_so_and_shows_no_invented_interval():
    card = size_card(size="tiny", report=make_report(with_intervals=False), training=TRAINING)
    assert card.verdict == ("meets the plan's perplexity and ROUGE-L bars on the point estimate, without an "
                            "interval (perplexity 2.43 < 20, ROUGE-L 0.560 > 0.3); "
                            "exact answers 12% (no interval measured); benchmarks not measured")
    page = render_markdown(card)
    assert "| perplexity (assistant tokens) | 2.43 | not measured |" in page
    assert "| all | 12% | not measured | 116 | 965 |" in page
    assert "95% CIs from" not in page


def test_no_right_answer_reads_as_an_exact_bound_not_a_zero_width_interval():
    # 0 of 86: every bootstrap resample is 0, so the interval 0-0% would read as certainty.
    report = make_report(exact={"all": (0, 86, 0.0, 0.0)}, ppl=(30.0, 28.0, 32.0))
    card = size_card(size="ladder-1M", report=report)
    assert "exact answers 0% (0 of 86: the bootstrap interval is a point; exact 95% bound: below 3.4%)" \
        in card.verdict
    # the bound is the rate at which 0 of 86 has probability 5%
    assert (1 - 0.034) ** 86 > 0.05 > (1 - 0.0345) ** 86
    report["bootstrap"]["confidence"] = 0.9
    assert "exact 90% bound: below 2.6%" in size_card(size="ladder-1M", report=report).verdict
    everything = make_report(exact={"all": (86, 86, 1.0, 1.0)})
    assert "100% (86 of 86: the bootstrap interval is a point; exact 95% bound: above 97%)" in \
        size_card(size="tiny", report=everything).verdict


def test_missing_inputs_read_not_measured_and_never_crash():
    card = size_card(size="350M", report=None, training=None, benchmarks=None)
    assert card.verdict == "not evaluated yet; exact answers not measured; benchmarks not measured"
    page = render_markdown(card)
    assert "| parameters | not measured |" in page and "| perplexity | not measured | not measured | < 20 |" in page
    assert "Benchmarks not measured: no benchmark report for this size." in page
    parse(render_html(card))
    # An evaluation without replies (num_samples 0): ROUGE-L and exact answers not measured, perplexity judged.
    report = {"metrics": {"perplexity": 3.0, "rouge_l": None}, "checks": {
        "perplexity_below_threshold": check(3.0, 20.0, low=None, high=None, below=True),
        "rouge_l_above_threshold": {"passed": False, "value": None, "threshold": 0.3}}}
    assert size_card(size="tiny", report=report).verdict == (
        "meets the plan's perplexity bar on the point estimate, without an interval (3.00 < 20); "
        "ROUGE-L not measured; exact answers not measured; benchmarks not measured")


def test_benchmarks_above_chance_are_counted_by_two_standard_errors():
    data = benchmarks(a=benchmark(0.40, 0.05, 0.25), b=benchmark(0.30, 0.03, 0.25), c=benchmark(0.05, 0.02, 0.0))
    assert [t["above_chance"] for t in data["tasks"].values()] == [True, False, True]
    card = size_card(size="tiny", report=make_report(), benchmarks=data)
    assert card.verdict.endswith("; benchmarks above chance on 2 of 3 tasks")
    # A file without the flag: the same rule from its numbers; without a chance level, not judged.
    del data["tasks"]["b"]["above_chance"]
    data["tasks"]["c"] = {**data["tasks"]["c"], "chance": None, "above_chance": None}
    assert size_card(size="tiny", report=make_report(), benchmarks=data).verdict.endswith(
        "; benchmarks above chance on 1 of 2 tasks (1 more without a chance level)")


# ---------------------------------------------------------------------------------------------
# The numbers, the pages
# ---------------------------------------------------------------------------------------------
def test_the_card_shows_the_inputs_numbers():
    report = make_report()
    data = benchmarks(local_mc=benchmark(0.3125, 0.0321, 0.25))
    page = render_markdown(size_card(size="tiny", report=report, training=TRAINING, benchmarks=data,
                                     links={"evaluation report": "../../evaluation_report/tiny/report.md",
                                            "samples": None}))
    m = report["metrics"]
    expected_rows = [
        "| parameters | 5,182,976 (5.18 M) |", "| tokens trained | 606,336 (0.61 M) |", "| wall time | 3 min 16 s |",
        f"| final validation loss | {TRAINING['val_loss_after']:.4f} |",
        f"| perplexity (assistant tokens) | {m['perplexity']:.2f} | 2.38–2.49 |",
        f"| bits per byte | {m['bits_per_byte']:.3f} | not measured |",
        f"| ROUGE-1 | {m['rouge1']:.3f} | 0.550–0.580 |", f"| ROUGE-2 | {m['rouge2']:.3f} | not measured |",
        f"| BLEU | {m['bleu']:.1f} | 45.0–49.5 |", f"| chrF | {m['chrf']:.1f} | 60.1–62.8 |",
        f"| all | {100 * 116 / 965:.0f}% | 10–14% | 116 | 965 |",
        f"| arithmetic | {100 * 1 / 86:.1f}% | 0–3.5% | 1 | 86 |",
        "| all | 0% | 0 | 9 |",  # probes
        "| local\\_mc | acc | 0.312 ± 0.032 | 0.250 | no | 200 |",  # 0.3125 - 2 * 0.0321 < 0.25
        "| evaluation report | [../../evaluation\\_report/tiny/report.md](../../evaluation_report/tiny/report.md) |",
        "| samples | not generated yet |",
        "95% CIs from 1000 seeded bootstrap resamples (seed 0).",
    ]
    assert [row for row in expected_rows if row not in page] == []


def test_markdown_tables_render_as_tables():
    from markdown_it import MarkdownIt

    card = size_card(size="tiny", report=make_report(), training=TRAINING, benchmarks=AT_CHANCE)
    rendered = MarkdownIt("commonmark").enable("table").render(render_markdown(card))
    parser = parse(rendered)
    # model, bars, quality, exact answers, probes, benchmarks
    assert parser.tags.count("table") == 6 and parser.tags.count("h2") == 6
    assert "Verdict:" in parser.text and card.verdict in parser.text


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.chunks: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.hrefs += [value for name, value in attrs if name == "href"]

    def handle_data(self, data):
        self.chunks.append(data)

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def parse(page: str) -> Collector:
    collector = Collector()
    collector.feed(page)
    return collector


def test_html_escapes_task_names_notes_and_metric_names_from_the_data():
    report = make_report(exact={"all": (1, 2, 0.1, 0.9), EVIL: (1, 2, 0.1, 0.9)})
    card = size_card(size="tiny", report=report, benchmarks=benchmarks(**{EVIL: benchmark(0.5, 0.1, 0.25)}),
                     note="<b>note</b> {css}", links={"samples": "../../sample_set/tiny/samples.html"})
    page = render_html(card)
    parsed = parse(page)
    assert "script" not in parsed.tags and "b" in parsed.tags  # our own <b>Verdict:</b>, not the note's
    assert parsed.text.count(EVIL) == 2 and "<b>note</b> {css}" in parsed.text  # the text survives intact
    assert parsed.hrefs == ["../../sample_set/tiny/samples.html"]
    assert "body {" in page  # the CSS is never formatted
    md = render_markdown(card)
    assert "<script>" not in md and "<b>" not in md and md.count("&lt;script&gt;") == 2


def test_write_card_writes_both_pages(tmp_path):
    card = size_card(size="tiny", report=make_report())
    paths = write_card(tmp_path / "out", card)
    assert paths["md"].read_text() == render_markdown(card) and paths["html"].read_text() == render_html(card)


# ---------------------------------------------------------------------------------------------
# The comparison card
# ---------------------------------------------------------------------------------------------
def test_comparison_card_names_the_firm_sizes_the_best_exact_answers_and_the_fit():
    firm = size_card(size="tiny", report=make_report(), training=TRAINING, benchmarks=AT_CHANCE, role="debug")
    loose = size_card(size="ladder-3M", report=make_report(rouge_l=(0.31, 0.28, 0.35), exact={
        "all": (50, 100, 0.4, 0.6)}), benchmarks=benchmarks(a=benchmark(0.4, 0.05, 0.25)), role="ladder")
    # The size comparison's scaling summary (evaluation.scaling.scaling_summary)
    scaling = {"law": "L = a * N^(-alpha)", "reason": None, "fit": {
        "a": 12.0, "alpha": 0.08, "r_squared": 0.97, "n": 4, "statement": "L = 12 * N^(-0.0800)",
        "residuals": {"tiny": {"observed": 0.9946, "predicted": 1.0012, "residual": -0.0066, "log_residual": -0.0066}}}}
    card = comparison_card([firm, loose], scaling=scaling, card_dirs={"tiny": "../report_card/tiny"})
    assert card.verdict == ("tiny meets every bar by the whole 95% CI; ladder-3M meets every bar on the point "
                            "estimate only; best exact answers ladder-3M: 50% (95% CI 40–60%); benchmarks above "
                            "chance on some task for ladder-3M; final validation loss ≈ 12 · N^-0.080 "
                            "(R² 0.970 over 4 sizes)")
    md = render_markdown(card)
    assert "| [tiny](../report_card/tiny/card.md) | debug | 5,182,976 (5.18 M) | 2.43 (95% CI 2.38–2.49) |" in md
    assert "| ladder-3M | ladder | not measured | 2.43 (95% CI 2.38–2.49) | 0.310 (95% CI 0.280–0.350) |" in md
    assert "| tiny | 0.9946 | 1.0012 | -0.0066 |" in md  # the fit's residuals
    assert parse(render_html(card)).hrefs == ["../report_card/tiny/card.html"]
    assert "| role | ladder: the CPU scaling ladder, not a research plan size |" in render_markdown(loose)


def test_comparison_card_without_a_fit_says_why_and_without_sizes_says_so():
    reason = "2 sizes with a validation loss; a power-law fit needs at least 3"
    card = comparison_card([size_card(size="tiny", report=make_report(ppl=(25.0, 22.0, 28.0)))],
                           scaling={"fit": None, "reason": reason})
    assert comparison_card([], scaling=reason).scaling == f"no scaling fit: {reason}"  # a bare reason too
    assert card.verdict == ("no size meets every bar; best exact answers tiny: 12% (95% CI 10–14%); "
                            f"benchmarks not measured; no scaling fit: {reason}")
    assert f"## Scaling\n\nno scaling fit: {reason}" in render_markdown(card)
    assert comparison_card([]).verdict == ("no size evaluated yet; benchmarks not measured; "
                                           "no scaling fit reported")
    parse(render_html(comparison_card([])))


# ---------------------------------------------------------------------------------------------
# A real report.json, and the asset
# ---------------------------------------------------------------------------------------------
def test_card_of_a_real_evaluation_report_shows_its_numbers(tmp_path):
    from exp1_assets.evaluation.evaluate_job import EvalSpec, evaluate
    from test_eval_reports import FakeReporter, write_inputs

    checkpoint, validation, test = write_inputs(tmp_path)
    spec = EvalSpec(checkpoint_path=str(checkpoint), validation_path=str(validation), test_path=str(test),
                    output_dir=str(tmp_path / "eval"), run_dir=str(tmp_path / "run"), num_samples=6,
                    max_new_tokens=4, run_probes=False, bootstrap_resamples=100)
    evaluate(spec, reporter=FakeReporter())
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    card = size_card(size="tiny", report=report)
    ppl, bounds = report["metrics"]["perplexity"], report["intervals"]["perplexity"]
    assert card.verdict.startswith(  # a random model: far above the bar, and so is its whole interval
        f"misses the plan's perplexity bar of < 20 ({ppl:.2f}, 95% CI {bounds['low']:.2f}–{bounds['high']:.2f})")
    overall = report["exact_accuracy"]["all"]
    assert [(a.task, a.correct, a.total, a.low, a.high) for a in card.exact][0] == (
        "all", overall["correct"], overall["total"], overall["low"], overall["high"])
    assert "Probes not measured." in render_markdown(card)
    parse(render_html(card))


def test_report_card_asset_writes_both_pages_from_the_stored_json(tmp_path):
    from dagster import materialize

    from exp1_assets.defs.report_card_assets import report_card
    from exp1_assets.defs.store import ArtifactStore

    def put(relative: str, obj: dict | str) -> Path:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return path

    put("evaluation_report/tiny/report.json", make_report())
    put("evaluation_report/tiny/report.md", "# report")
    put("model_checkpoint/tiny/train_result.json", TRAINING)
    put("benchmark_report/tiny/benchmarks.json", AT_CHANCE)
    result = materialize([report_card], partition_key="tiny", resources={"store": ArtifactStore(root=str(tmp_path))})
    assert result.success
    metadata = result.asset_materializations_for_node("report_card")[0].metadata
    expected = size_card(size="tiny", report=make_report(), training=TRAINING, benchmarks=AT_CHANCE)
    assert metadata["verdict"].value == expected.verdict
    card_md = Path(metadata["card"].value)
    assert card_md == tmp_path / "report_card" / "tiny" / "card.md"
    assert Path(metadata["card_html"].value).read_text().startswith("<!DOCTYPE html>")
    page = card_md.read_text()
    assert "[../../evaluation\\_report/tiny/report.md](../../evaluation_report/tiny/report.md)" in page
    assert (card_md.parent / "../../evaluation_report/tiny/report.md").resolve().read_text() == "# report"
    assert "| samples | not generated yet |" in page and "| benchmarks | not generated yet |" in page
