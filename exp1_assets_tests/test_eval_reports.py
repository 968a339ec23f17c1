"""Report writers (escaping, HTML that parses), prompt loading, comparison, and both jobs end to end."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from eval_tiny_model import chat_rows, make_checkpoint, make_tokenizer, packed_blocks
from exp1_assets.evaluation import comparison, prompts, reports, sample_analysis
from exp1_assets.evaluation.metrics import answer_matches
from exp1_assets.evaluation.evaluate_job import EvalSpec
from exp1_assets.evaluation.sample_job import SampleSpec
from exp1_assets.evaluation.thresholds import Thresholds

REPO = Path(__file__).resolve().parents[1]
EVIL = "<script>alert('x')</script> {css} | **bold** ``` {0} }"


class TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def sample_rows() -> list[dict]:
    return [
        {"category": "code", "prompt": "Write code {x}", "temperature": 0.7, "variation": 0, "seed": 0,
         "text": EVIL, "n_tokens": 12, "stopped": True},
        {"category": "qa", "prompt": "Why?", "temperature": 1.0, "variation": 1, "seed": 1,
         "text": "- one\n- two 3 items.", "n_tokens": 7, "stopped": False},
    ]


def test_samples_html_parses_and_escapes_model_output(tmp_path):
    samples = sample_rows()
    analysis = sample_analysis.analyze(samples)
    paths = reports.write_samples(tmp_path, samples=samples, analysis=analysis, title="T {braces} <b>")
    page = paths["html"].read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    parser = TextCollector()
    parser.feed(page)
    assert "script" not in parser.tags and parser.tags.count("pre") == 2
    assert EVIL in "".join(parser.text)  # the text survives intact, braces included
    assert "{css}" in page and "body {" in page  # CSS braces untouched by any formatting
    assert [json.loads(line)["text"] for line in paths["jsonl"].read_text().splitlines()] == [EVIL, samples[1]["text"]]
    md = paths["md"].read_text()
    assert "````\n" + EVIL + "\n````" in md  # fence longer than the model's own ```


def test_markdown_escaping_and_worst_best_table():
    assert reports.md_escape("a|b\n<i>") == "a\\|b ⏎ &lt;i&gt;"
    preds = [{"prompt": f"p{i}", "reference": "ref", "prediction": EVIL if i == 0 else f"x{i}",
              "rouge_l": r, "bleu": 10.0 * r} for i, r in enumerate([0.0, 0.9, 0.5, 0.2])]
    table = reports.worst_and_best_rows(preds, 2)
    lines = table.splitlines()
    assert len(lines) == 2 + 4 and all(line.count(" | ") == 5 for line in lines)  # no cell broke the table
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| worst", "| worst", "| best", "| best"]
    assert "<script>" not in table and "p1" in lines[4]  # best row first = highest ROUGE-L


def test_report_markdown_shows_each_headline_number_with_its_interval_and_the_checks_verdicts():
    report = {
        "checkpoint": "ckpt", "metrics": {"perplexity": 2.43127, "rouge_l": 0.5612, "bleu": 12.5},
        "intervals": {"perplexity": {"low": 2.38, "high": 2.4901}, "rouge_l": {"low": 0.28, "high": 0.61},
                      "bleu": {"low": None, "high": None}, "exact_accuracy/addition": {"low": 0.1, "high": 0.14}},
        "bootstrap": {"resamples": 1000, "confidence": 0.95, "seed": 0, "unit": {}},
        "exact_accuracy": {"addition": {"accuracy": 0.12, "correct": 12, "total": 100, "low": 0.1, "high": 0.14}},
        "checks": Thresholds().judge({"perplexity": 2.43127, "rouge_l": 0.5612},
                                     intervals={"perplexity": {"low": 2.38, "high": 2.4901},
                                                "rouge_l": {"low": 0.28, "high": 0.61}}),
    }
    lines = reports.evaluation_markdown(report, []).splitlines()
    assert "| perplexity | 2.431 (95% CI 2.38–2.49) |" in lines
    assert "| rouge\\_l | 0.5612 (95% CI 0.28–0.61) |" in lines  # names escaped: task names are data
    assert "| bleu | 12.5 |" in lines  # no interval: the number alone, never a made-up one
    assert "| exact\\_accuracy/addition | 0.12 (95% CI 0.1–0.14) |" in lines
    assert "| `perplexity_below_threshold` | 2.4313 | 2.38–2.49 | 20.0000 | yes | yes |" in lines
    assert "| `rouge_l_above_threshold` | 0.5612 | 0.28–0.61 | 0.3000 | yes | no |" in lines  # 0.28 < 0.3
    assert "| addition | 0.1200 | 0.1–0.14 | 12 | 100 |" in lines


def test_sample_analysis_features():
    rows = sample_analysis.analyze(sample_rows() + [
        {"category": "qa", "text": "go go go go go go", "stopped": True}])
    qa = next(r for r in rows if r["category"] == "qa")
    assert qa["n"] == 2 and qa["repetitive"] == 0.5 and qa["bullet_list"] == 0.5 and qa["numbers"] == 0.5
    assert qa["stopped"] == 0.5 and qa["words_mean"] == pytest.approx((6 + 6) / 2)
    assert rows[-1]["category"] == "all" and rows[-1]["n"] == 3
    code = next(r for r in rows if r["category"] == "code")
    assert code["code_block"] == 1.0


def test_load_prompts_reports_file_line_and_problem(tmp_path):
    assert {p["category"] for p in prompts.DEFAULT_PROMPTS} == set(prompts.CATEGORIES)
    assert all(sum(p["category"] == c for p in prompts.DEFAULT_PROMPTS) >= 3 for c in prompts.CATEGORIES)
    path = tmp_path / "p.jsonl"
    path.write_text('{"category": "qa", "prompt": "Hi"}\n\n{"category": "qa"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:3: field 'prompt' must be a non-empty string"):
        prompts.load_prompts(inline=None, path=str(path))
    path.write_text('{"category": "qa", "prompt": "Hi"}\nnot json\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: invalid JSON"):
        prompts.load_prompts(inline=None, path=str(path))
    path.write_text('{"category": "qa", "prompt": "Hi"}\n')
    assert prompts.load_prompts(inline=None, path=str(path)) == [{"category": "qa", "prompt": "Hi"}]


def test_compare_sizes_lists_missing_and_plots(tmp_path):
    history = [{"step": 10, "loss": 3.0}, {"step": 10, "eval_loss": 2.5}, {"step": 20, "eval_loss": 2.0}]
    result = comparison.compare_sizes(
        reports={"tiny": {"metrics": {"perplexity": 12.0, "rouge_l": 0.35, "bleu": 20.0}},
                 "125M": {"metrics": {"perplexity": 30.0, "rouge_l": 0.2, "bleu": 10.0}}},
        training={"tiny": {"param_count": 3_000_000, "tokens_seen": 1000, "wall_time_s": 10.0},
                  "125M": {"param_count": 124_000_000, "tokens_seen": 5000, "wall_time_s": 100.0,
                           "tokens_per_s": 55.0}},
        loss_histories={"tiny": history, "125M": history}, out_dir=tmp_path, all_sizes=["tiny", "125M", "350M"])
    assert result["missing_sizes"] == ["350M"] and result["num_sizes"] == 2
    tiny, big = result["rows"]
    assert (tiny["ppl_pass"], tiny["rouge_l_pass"], big["ppl_pass"], big["rouge_l_pass"]) == (True, True, False, False)
    assert tiny["tokens_per_s"] == 100.0 and big["tokens_per_s"] == 55.0  # derived only when absent
    assert tiny["final_val_loss"] == 2.0 and tiny["final_train_loss"] == 3.0
    for name in ("comparison.json", "comparison.md", *json.loads((tmp_path / "comparison.json").read_text())["plots"].values()):
        assert (tmp_path / name).stat().st_size > 0
    assert "350M" in (tmp_path / "comparison.md").read_text()
    empty = comparison.compare_sizes(reports={}, training={}, loss_histories={}, out_dir=tmp_path / "e", all_sizes=["tiny"])
    assert empty["missing_sizes"] == ["tiny"] and empty["rows"] == []


def test_each_size_is_judged_by_the_thresholds_its_report_recorded(tmp_path):
    """A run that raised the perplexity bar passes it in the comparison too, not only in its check."""
    raised = {"perplexity_below": 40.0, "rouge_l_above": 0.1}
    result = comparison.compare_sizes(
        reports={"tiny": {"metrics": {"perplexity": 30.0, "rouge_l": 0.2}, "thresholds": raised},
                 "125M": {"metrics": {"perplexity": 30.0, "rouge_l": 0.2}}},  # no record: the plan's bars
        training={}, loss_histories={}, out_dir=tmp_path, all_sizes=["tiny", "125M"])
    tiny, big = result["rows"]
    assert (tiny["ppl_pass"], tiny["rouge_l_pass"]) == (True, True)
    assert (big["ppl_pass"], big["rouge_l_pass"]) == (False, False)
    recorded = json.loads((tmp_path / "comparison.json").read_text())["thresholds"]
    assert recorded == {"tiny": raised, "125M": {"perplexity_below": 20.0, "rouge_l_above": 0.3}}


def test_the_report_records_the_thresholds_its_checks_used(tmp_path):
    bars = Thresholds(perplexity_below=40.0)
    checks = bars.judge({"perplexity": 30.0, "rouge_l": 0.35})
    assert checks["perplexity_below_threshold"] == {"passed": True, "value": 30.0, "threshold": 40.0,
                                                    "low": None, "high": None, "interval_clears": False}
    assert Thresholds.recorded_in({"thresholds": asdict(bars)}) == bars
    spec = EvalSpec(checkpoint_path="c", validation_path="v", test_path="t", output_dir="o", run_dir="r",
                    thresholds=bars)
    assert EvalSpec.from_json(spec.to_json()).thresholds == bars  # survives the job's spec file
    with pytest.raises(ValueError, match="thresholds.rouge_l_above"):
        Thresholds(rouge_l_above=1.5)


def test_specs_validate_and_round_trip(tmp_path):
    spec = SampleSpec(checkpoint_path="c", output_dir="o", run_dir="r", prompts=({"category": "a", "prompt": "b"},))
    assert SampleSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="top_p"):
        SampleSpec(checkpoint_path="c", output_dir="o", run_dir="r", top_p=0.0)
    with pytest.raises(ValueError, match="temperatures"):
        SampleSpec(checkpoint_path="c", output_dir="o", run_dir="r", temperatures=())
    espec = EvalSpec(checkpoint_path="c", validation_path="v", test_path="t", output_dir="o", run_dir="r")
    assert EvalSpec.from_json(espec.to_json()) == espec and espec.num_samples == 1000
    with pytest.raises(ValueError, match="num_samples"):
        EvalSpec(checkpoint_path="c", validation_path="v", test_path="t", output_dir="o", run_dir="r", num_samples=-1)
    with pytest.raises(ValueError, match="unknown EvalSpec field"):
        EvalSpec.from_json(json.dumps({**espec.to_dict(), "bogus": 1}))


# ---------------------------------------------------------------------------------------------
# Both jobs as `python -m ...` on the tiny random model
# ---------------------------------------------------------------------------------------------
def write_inputs(tmp_path: Path, *, rows: list[dict] | None = None) -> tuple[Path, Path, Path]:
    """Checkpoint, packed validation blocks and a test split (`rows`, default `chat_rows(10)`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    checkpoint = make_checkpoint(tmp_path / "checkpoint")
    blocks = packed_blocks(make_tokenizer(), n_blocks=3, max_length=64)
    schema = pa.schema([(c, pa.list_(pa.int32())) for c in ("input_ids", "labels", "position_ids")])
    validation = tmp_path / "validation.arrow"
    with pa.OSFile(str(validation), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(pa.Table.from_pylist(blocks, schema=schema))
    test = tmp_path / "test.parquet"
    rows = [{"id": f"t{i}", **row} for i, row in enumerate(chat_rows(10) if rows is None else rows)]
    pq.write_table(pa.Table.from_pylist(rows), test)
    return checkpoint, validation, test


def run_job(module: str, spec_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, str(spec_path)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=str(REPO))


def test_evaluate_and_sample_jobs_end_to_end(tmp_path):
    checkpoint, validation, test = write_inputs(tmp_path)
    spec = EvalSpec(checkpoint_path=str(checkpoint), validation_path=str(validation), test_path=str(test),
                    output_dir=str(tmp_path / "eval"), run_dir=str(tmp_path / "run"), num_samples=6,
                    max_new_tokens=8, generation_batch_size=4)
    proc = run_job("exp1_assets.evaluation.evaluate_job", spec.write(tmp_path / "eval_spec.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    metrics = report["metrics"]
    assert metrics["num_samples"] == 6 and metrics["validation_blocks"] == 3
    assert metrics["perplexity"] > 50  # a random model over a 400-token vocabulary
    assert 0 < metrics["bits_per_byte"] and math.isfinite(metrics["perplexity_all_tokens"])
    assert set(report["exact_accuracy"]) == {"addition", "arithmetic", "all"}
    assert report["exact_accuracy"]["all"]["total"] == 6
    assert report["checks"]["perplexity_below_threshold"]["passed"] is False
    assert report["bleu_signature"].startswith("nrefs:1")
    preds = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and {"prompt", "reference", "prediction", "rouge_l", "bleu"} <= set(preds[0])
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert "Worst and best rows" in markdown and "95% CI" in markdown

    # Error bars: every headline number, each per-task accuracy, and the checks' verdicts on them.
    intervals = report["intervals"]
    assert set(intervals) == {"perplexity", "rouge1", "rouge2", "rouge_l", "bleu", "chrf", "exact_accuracy",
                              "exact_accuracy/addition", "exact_accuracy/arithmetic"}
    assert report["bootstrap"] == {"resamples": 1000, "confidence": 0.95, "seed": 0,
                                   "unit": {k: "block" if k == "perplexity" else "row" for k in intervals}}
    assert intervals["perplexity"]["low"] <= metrics["perplexity"] <= intervals["perplexity"]["high"]
    assert intervals["perplexity"]["low"] < intervals["perplexity"]["high"]  # 3 blocks: some spread
    # Recomputed from predictions.jsonl alone: the interval of the rows' ROUGE-L and exact answers.
    rouge_l = spec.bootstrap().mean([row["rouge_l"] for row in preds])
    assert intervals["rouge_l"] == pytest.approx(rouge_l.as_dict())
    hits = [int(answer_matches(row["prediction"], row["answer"])) for row in preds if row["task"] == "addition"]
    addition = spec.bootstrap().mean(hits).as_dict()
    assert intervals["exact_accuracy/addition"] == pytest.approx(addition)
    assert {k: report["exact_accuracy"]["addition"][k] for k in ("low", "high")} == intervals["exact_accuracy/addition"]
    check = report["checks"]["perplexity_below_threshold"]
    assert (check["low"], check["high"], check["interval_clears"]) == (
        intervals["perplexity"]["low"], intervals["perplexity"]["high"], False)

    sspec = SampleSpec(checkpoint_path=str(checkpoint), output_dir=str(tmp_path / "samples"),
                       run_dir=str(tmp_path / "run"), temperatures=(0.7, 1.0), variations=2, max_new_tokens=8,
                       prompts=({"category": "qa", "prompt": "Why?"}, {"category": "code", "prompt": "Write {x}"}))
    proc = run_job("exp1_assets.evaluation.sample_job", sspec.write(tmp_path / "sample_spec.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (tmp_path / "samples" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 * 2
    first = (tmp_path / "samples" / "samples.jsonl").read_text()
    TextCollector().feed((tmp_path / "samples" / "samples.html").read_text())
    assert "## Analysis" in (tmp_path / "samples" / "samples.md").read_text()
    # Seeded: a rerun writes the same samples.
    proc = run_job("exp1_assets.evaluation.sample_job", tmp_path / "sample_spec.json")
    assert proc.returncode == 0 and (tmp_path / "samples" / "samples.jsonl").read_text() == first


def test_job_failure_is_recorded_in_run_dir(tmp_path):
    spec = EvalSpec(checkpoint_path=str(tmp_path / "nope"), validation_path="v", test_path="t",
                    output_dir=str(tmp_path / "eval"), run_dir=str(tmp_path / "run"))
    proc = run_job("exp1_assets.evaluation.evaluate_job", spec.write(tmp_path / "spec.json"))
    assert proc.returncode != 0
    error = (tmp_path / "run" / "errors" / "rank0.txt").read_text()
    assert "checkpoint_path" in error and "no config.json" in error


class FakeReporter:
    def __init__(self) -> None:
        self.metadata, self.lines = None, []

    def log(self, message):
        self.lines.append(message)

    def report_materialization(self, *, metadata, data_version=None):
        self.metadata = metadata


def test_evaluation_metadata_has_the_headline_keys_as_floats(tmp_path):
    from exp1_assets.evaluation.evaluate_job import evaluate

    checkpoint, validation, test = write_inputs(tmp_path)
    spec = EvalSpec(checkpoint_path=str(checkpoint), validation_path=str(validation), test_path=str(test),
                    output_dir=str(tmp_path / "eval"), run_dir=str(tmp_path / "run"), num_samples=4,
                    max_new_tokens=4, run_probes=False)
    reporter = FakeReporter()
    evaluate(spec, reporter=reporter)
    keys = ["perplexity", "perplexity_all_tokens", "bits_per_byte", "rouge1", "rouge2", "rouge_l", "bleu", "chrf",
            "distinct_1", "distinct_2", "distinct_3", "distinct_4", "self_bleu", "exact_accuracy"]
    assert all(type(reporter.metadata[k]) is float for k in keys)
    for key in ("perplexity", "rouge1", "rouge2", "rouge_l", "bleu", "chrf", "exact_accuracy"):
        low, high = reporter.metadata[f"{key}_ci_low"], reporter.metadata[f"{key}_ci_high"]
        assert type(low) is float and type(high) is float and low <= reporter.metadata[key] <= high, key
    assert reporter.metadata["num_samples"] == 4 and reporter.metadata["bleu_signature"].startswith("nrefs:1")
    assert reporter.metadata["worst_and_best_rows"]["type"] == "md"
    assert math.isnan(reporter.metadata["probe_accuracy"])  # probes off: reported as NaN, not 0
    assert any(line.startswith("perplexity ") for line in reporter.lines)


def multi_turn_rows(n: int) -> list[dict]:
    """Test-split rows with a system message and one or two earlier exchanges before the scored one."""
    earlier = [{"role": "user", "content": "Reverse the word 'apple'."},
               {"role": "assistant", "content": "The word reversed is 'elppa'."}]
    rows = []
    for i, row in enumerate(chat_rows(n)):
        question_and_reply = [m for m in row["messages"] if m["role"] != "system"]
        messages = [{"role": "system", "content": "Be brief."}] + earlier * (1 + i % 2) + question_and_reply
        rows.append({**row, "messages": messages})
    return rows


def test_each_prediction_row_keeps_its_whole_prompt_and_regenerates_with_plain_transformers(tmp_path, monkeypatch):
    """predictions.jsonl `messages` render to the ids the evaluation fed; `generate` gives the prediction."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exp1_assets.evaluation import evaluate_job

    conversations = multi_turn_rows(6)
    checkpoint, validation, test = write_inputs(tmp_path, rows=conversations)
    tok = AutoTokenizer.from_pretrained(checkpoint)
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    # A random model never says <|im_end|>; a louder <|im_end|> embedding (tied to the output
    # layer) makes some replies stop early while others run to max_new_tokens: both paths checked.
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    with torch.no_grad():
        model.get_input_embeddings().weight[end_of_turn] *= 3
    model.save_pretrained(checkpoint)

    fed: list[tuple[int, ...]] = []  # every prompt's real (unpadded) ids, as the model received them

    def record_prefill(_module, _args, kwargs):
        if "logits_to_keep" in kwargs:  # the prefill; decode steps feed one new token, perplexity no cut
            for ids, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist()):
                fed.append(tuple(t for t, m in zip(ids, mask) if m))

    load = evaluate_job.load_checkpoint

    def load_and_watch(path, *, device):
        loaded, tokenizer = load(path, device=device)
        loaded.register_forward_pre_hook(record_prefill, with_kwargs=True)
        return loaded, tokenizer

    monkeypatch.setattr(evaluate_job, "load_checkpoint", load_and_watch)
    spec = EvalSpec(checkpoint_path=str(checkpoint), validation_path=str(validation), test_path=str(test),
                    output_dir=str(tmp_path / "eval"), run_dir=str(tmp_path / "run"), num_samples=6,
                    max_new_tokens=12, generation_batch_size=4, run_probes=False)
    evaluate_job.evaluate(spec, reporter=FakeReporter())
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6

    rendered = [tok.apply_chat_template(row["messages"], add_generation_prompt=True)["input_ids"] for row in rows]
    assert [row["prompt_tokens"] for row in rows] == [len(ids) for ids in rendered]  # nothing was cut
    assert sorted(fed) == sorted(tuple(ids) for ids in rendered)

    plain = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    for row, ids in zip(rows, rendered):
        with torch.inference_mode():
            out = plain.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=spec.max_new_tokens, do_sample=False, eos_token_id=end_of_turn,
                                 pad_token_id=tok.pad_token_id)
        new = out[0, len(ids):].tolist()
        assert tok.decode(new, skip_special_tokens=True).strip() == row["prediction"], row["id"]
        assert (row["n_tokens"], row["stopped"]) == (len(new), new[-1] == end_of_turn), row["id"]
    assert {row["stopped"] for row in rows} == {True, False}

    # The whole conversation up to the scored reply: system message and earlier turns included.
    source = {f"t{i}": c["messages"] for i, c in enumerate(conversations)}
    for row in rows:
        assert row["messages"] == source[row["id"]][:-1]
        assert row["messages"][0] == {"role": "system", "content": "Be brief."}
        assert row["messages"][-1]["role"] == "user" and row["prompt"] == row["messages"][-1]["content"]
    assert max(len(row["messages"]) for row in rows) == 6  # system, two earlier exchanges, the question
