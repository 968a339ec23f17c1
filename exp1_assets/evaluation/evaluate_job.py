"""The evaluation job: `python -m exp1_assets.evaluation.evaluate_job spec.json`.

Runs under `accelerate launch` (one process). Only global rank 0 works; other ranks exit at once.
It measures, for one checkpoint:
- perplexity on the packed validation blocks: assistant tokens (what training optimized) and all
  real tokens (the research scripts' number), plus bits per byte (tokenizer independent);
- greedy replies to `num_samples` test conversations (prompt = everything before the last
  assistant turn, reference = that turn): ROUGE-1/2/L, BLEU, chrF, length ratio, diversity,
  exact-answer accuracy per task family (built-in corpus), and the few-shot probe set;
- a seeded percentile-bootstrap confidence interval for each headline number (bootstrap.py):
  perplexity resamples validation blocks, the others resample test rows.
Outputs go to `output_dir` (report.json, predictions.jsonl, report.md). Each predictions.jsonl row
keeps the prompt's `messages` and `prompt_tokens`, so plain transformers can regenerate it
(docs/artifacts.md). Asset checks are computed by the asset from report.json (its `checks` block),
not reported from here.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exp1_assets.evaluation.job_common import (
    JsonSpec, load_checkpoint, md_metadata, require_non_negative_int, require_path, require_positive,
    resolve_device, run_rank0_job,
)
from exp1_assets.evaluation.thresholds import Thresholds
from exp1_assets.runtime import Reporter

HEADLINE_KEYS = ("perplexity", "perplexity_all_tokens", "bits_per_byte", "rouge1", "rouge2", "rouge_l", "bleu",
                 "chrf", "distinct_1", "distinct_2", "distinct_3", "distinct_4", "self_bleu", "exact_accuracy",
                 "probe_accuracy", "length_ratio_mean", "stopped_fraction")
# The headline numbers with a confidence interval (report["intervals"]; per-task exact accuracy
# adds "exact_accuracy/<task>" keys). Metadata carries <key>_ci_low / <key>_ci_high for these.
INTERVAL_KEYS = ("perplexity", "rouge1", "rouge2", "rouge_l", "bleu", "chrf", "exact_accuracy")


@dataclass(frozen=True)
class EvalSpec(JsonSpec):
    checkpoint_path: str
    validation_path: str  # packed validation.arrow
    test_path: str  # test.parquet
    output_dir: str
    run_dir: str  # errors/rank<N>.txt
    num_samples: int = 1000  # test conversations to generate for (0: none)
    max_new_tokens: int = 128
    generation_batch_size: int = 64  # rows decoding together (bench/RESULTS.md)
    eval_batch_size: int = 8  # packed blocks per perplexity forward
    max_eval_blocks: int | None = None  # None: every validation block
    self_bleu_samples: int = 200
    run_probes: bool = True
    thresholds: Thresholds = Thresholds()  # the experiment's bars; the report records them
    seed: int = 0  # the test sample and the bootstrap's resamples
    device: str = "auto"
    bootstrap_resamples: int = 1000
    """Bootstrap resamples behind each confidence interval (at least 100)."""
    bootstrap_confidence: float = 0.95
    """Coverage of the reported confidence intervals, in (0, 1)."""

    def __post_init__(self) -> None:
        from exp1_assets.evaluation.bootstrap import MIN_RESAMPLES  # numpy: not at import (the code server)

        for name in ("checkpoint_path", "validation_path", "test_path", "output_dir", "run_dir"):
            require_path(name, getattr(self, name))
        for name in ("num_samples", "seed"):
            require_non_negative_int(name, getattr(self, name))
        for name in ("max_new_tokens", "generation_batch_size", "eval_batch_size", "self_bleu_samples"):
            require_positive(name, getattr(self, name))
        if self.max_eval_blocks is not None:
            require_positive("max_eval_blocks", self.max_eval_blocks)
        if not isinstance(self.thresholds, Thresholds):
            raise ValueError(f"thresholds: must be a Thresholds, got {type(self.thresholds).__name__}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if isinstance(self.bootstrap_resamples, bool) or not isinstance(self.bootstrap_resamples, int) \
                or self.bootstrap_resamples < MIN_RESAMPLES:
            raise ValueError(f"bootstrap_resamples: must be an integer >= {MIN_RESAMPLES}, "
                             f"got {self.bootstrap_resamples!r}")
        if isinstance(self.bootstrap_confidence, bool) or not isinstance(self.bootstrap_confidence, (int, float)) \
                or not 0 < self.bootstrap_confidence < 1:
            raise ValueError(f"bootstrap_confidence: must be a number in (0, 1), got {self.bootstrap_confidence!r}")

    def bootstrap(self) -> Any:
        """The `bootstrap.Bootstrap` these settings describe (seeded by `seed`)."""
        from exp1_assets.evaluation.bootstrap import Bootstrap

        return Bootstrap(resamples=self.bootstrap_resamples, confidence=self.bootstrap_confidence, seed=self.seed)


def load_test_rows(path: str, *, num_samples: int, seed: int) -> list[dict[str, Any]]:
    """Prompt/reference pairs from test.parquet: a seeded sample of `num_samples` conversations.

    `prompt_messages` is everything before the last assistant turn (system message and earlier
    turns included): generation renders exactly this list, and predictions.jsonl records it.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "messages" not in table.column_names:
        raise ValueError(f"{path}: test split has no 'messages' column (columns: {table.column_names})")
    rows = table.to_pylist()
    if len(rows) > num_samples:
        rows = [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), num_samples))]
    pairs = []
    for index, row in enumerate(rows):
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None or last == 0:
            raise ValueError(f"{path}: conversation {row.get('id', index)!r} has no assistant turn after a prompt")
        pairs.append({"id": row.get("id", f"row-{index}"), "prompt_messages": messages[:last],
                      "reference": messages[last]["content"], "task": row.get("task"), "answer": row.get("answer")})
    return pairs


def perplexity_metrics(model: Any, tokenizer: Any, spec: EvalSpec, *, device: str) -> tuple[dict, dict]:
    """Perplexity numbers, and the perplexity's interval (packed blocks resampled: the scored unit)."""
    import numpy as np

    from exp1_assets.data.blocks import block_length, load_blocks
    from exp1_assets.evaluation import metrics

    if not Path(spec.validation_path).is_file():
        raise FileNotFoundError(f"validation_path: packed blocks not found: {spec.validation_path}")
    blocks = load_blocks(spec.validation_path, max_length=block_length(spec.validation_path),
                         vocab_size=len(tokenizer))
    if spec.max_eval_blocks is not None:
        blocks = blocks.select(range(min(spec.max_eval_blocks, len(blocks))))
    sums = metrics.token_nll_sums(model, blocks, batch_size=spec.eval_batch_size, device=device,
                                  pad_token_id=tokenizer.pad_token_id)
    if sums["tokens_assistant"] == 0:
        raise ValueError(f"{spec.validation_path}: no assistant (label != -100) tokens: the loss mask masks everything")
    n_bytes = metrics.assistant_target_bytes(blocks, tokenizer)
    interval = spec.bootstrap().ratio(sums["block_nll_assistant"], sums["block_tokens_assistant"], transform=np.exp)
    return {
        "perplexity": metrics.perplexity(sums["nll_assistant"], sums["tokens_assistant"]),
        "perplexity_all_tokens": metrics.perplexity(sums["nll_all"], sums["tokens_all"]),
        "bits_per_byte": metrics.bits_per_byte(sums["nll_assistant"], n_bytes),
        "loss_assistant": sums["nll_assistant"] / sums["tokens_assistant"],
        "tokens_assistant": sums["tokens_assistant"], "tokens_all": sums["tokens_all"],
        "assistant_bytes": n_bytes, "validation_blocks": len(blocks),
    }, {"perplexity": interval}


def generation_metrics(model: Any, tokenizer: Any, spec: EvalSpec, *, reporter: Reporter) -> tuple[dict, list]:
    """Greedy replies on the test sample; overlap, diversity and exact-answer numbers + per-row rows."""
    from exp1_assets.evaluation import metrics
    from exp1_assets.evaluation.generation import generate_batched

    pairs = load_test_rows(spec.test_path, num_samples=spec.num_samples, seed=spec.seed)
    started = time.perf_counter()
    gens = generate_batched(model, tokenizer, [p["prompt_messages"] for p in pairs],
                            max_new_tokens=spec.max_new_tokens, batch_size=spec.generation_batch_size)
    seconds = time.perf_counter() - started
    reporter.log(f"generated {len(gens)} replies in {seconds:.1f}s")
    preds, refs = [g.text for g in gens], [p["reference"] for p in pairs]
    per_row_rouge, per_row_bleu = metrics.rouge_scores(preds, refs), metrics.sentence_bleus(preds, refs)
    statistics = metrics.corpus_statistics(preds, refs)  # extracted once: the scores and their intervals
    result: dict[str, Any] = {**metrics.mean_rouge(per_row_rouge), **metrics.bleu_chrf_scores(statistics),
                              **metrics.length_ratio(preds, refs)}
    for n in range(1, 5):
        result[f"distinct_{n}"] = metrics.distinct_n(preds, n=n)
    result["self_bleu"] = metrics.self_bleu(preds, max_samples=spec.self_bleu_samples, seed=spec.seed)
    hits = metrics.exact_hits(predictions=preds, answers=[p["answer"] for p in pairs], tasks=[p["task"] for p in pairs])
    started = time.perf_counter()
    intervals = generation_intervals(spec.bootstrap(), per_row_rouge=per_row_rouge, statistics=statistics, hits=hits)
    reporter.log(f"bootstrap intervals ({spec.bootstrap_resamples} resamples) in {time.perf_counter() - started:.2f}s")
    exact = metrics.accuracy_by_task(hits)
    for task, entry in exact.items():
        entry.update(intervals[exact_interval_key(task)].as_dict())
    result["intervals"] = intervals
    result["exact_accuracy_by_task"] = exact
    result["exact_accuracy"] = exact["all"]["accuracy"] if "all" in exact else float("nan")
    result["stopped_fraction"] = sum(g.stopped for g in gens) / len(gens) if gens else float("nan")
    result["generation_seconds"] = seconds
    result["mean_new_tokens"] = sum(g.n_tokens for g in gens) / len(gens) if gens else float("nan")
    result["num_samples"] = len(gens)
    # `messages` is the very list the prompt was rendered from, and `prompt_tokens` how many of its
    # rendered ids the model saw (fewer only when cut on the left to fit): a row is regenerable
    # with plain transformers. `prompt` (the last turn before the reference) stays for the reports.
    predictions = [
        {"id": p["id"], "messages": p["prompt_messages"], "prompt_tokens": g.prompt_tokens,
         "prompt": p["prompt_messages"][-1]["content"], "reference": p["reference"],
         "prediction": g.text, "rouge_l": r["rouge_l"], "bleu": b, "task": p["task"], "answer": p["answer"],
         "stopped": g.stopped, "n_tokens": g.n_tokens}
        for p, g, r, b in zip(pairs, gens, per_row_rouge, per_row_bleu)
    ]
    return result, predictions


def exact_interval_key(task: str) -> str:
    """report["intervals"] key of a task family's exact accuracy ("all" is the overall number)."""
    return "exact_accuracy" if task == "all" else f"exact_accuracy/{task}"


def generation_intervals(
    boot: Any, *, per_row_rouge: list[dict[str, float]], statistics: dict[str, Any], hits: dict[str, list[int]]
) -> dict[str, Any]:
    """Intervals of the reply metrics. ROUGE, BLEU and chrF share one resample matrix (same rows,
    same seed); each task family's exact accuracy resamples its own rows, so its row count is fixed."""
    intervals = {key: boot.mean([row[key] for row in per_row_rouge]) for key in ("rouge1", "rouge2", "rouge_l")}
    for name, stats in statistics.items():  # bleu, chrf
        intervals[name] = boot.corpus_score(stats.rows, stats.score)
    for task in sorted(hits, key=lambda t: t != "all"):  # the overall number first, then each family
        intervals[exact_interval_key(task)] = boot.mean(hits[task])
    return intervals


def probe_metrics(model: Any, tokenizer: Any, spec: EvalSpec) -> dict[str, dict]:
    from exp1_assets.evaluation.generation import generate_batched
    from exp1_assets.evaluation.metrics import exact_accuracy
    from exp1_assets.evaluation.prompts import PROBES, few_shot_messages

    gens = generate_batched(model, tokenizer, [few_shot_messages(p) for p in PROBES],
                            max_new_tokens=min(spec.max_new_tokens, 32), batch_size=spec.generation_batch_size)
    return exact_accuracy(predictions=[g.text for g in gens], answers=[p["answer"] for p in PROBES],
                          tasks=[p["category"] for p in PROBES])


def evaluate(spec: EvalSpec, *, reporter: Reporter) -> dict[str, Any]:
    from exp1_assets.evaluation.bootstrap import NO_INTERVAL
    from exp1_assets.evaluation.reports import worst_and_best_rows, write_evaluation_report

    device = resolve_device(spec.device)
    model, tokenizer = load_checkpoint(spec.checkpoint_path, device=device)
    reporter.log(f"evaluating {spec.checkpoint_path} on {device}")
    numbers, intervals = perplexity_metrics(model, tokenizer, spec, device=device)
    reporter.log(f"perplexity {numbers['perplexity']:.3f} (assistant), {numbers['perplexity_all_tokens']:.3f} (all)")
    predictions: list[dict] = []
    extra: dict[str, Any] = {}
    # Null until replies are scored; exact_accuracy appears only when some rows have answers.
    intervals.update({key: NO_INTERVAL for key in ("rouge1", "rouge2", "rouge_l", "bleu", "chrf")})
    if spec.num_samples:
        generated, predictions = generation_metrics(model, tokenizer, spec, reporter=reporter)
        intervals.update(generated.pop("intervals"))
        signatures = {k: generated.pop(k) for k in ("bleu_signature", "chrf_signature", "bleu_formatted")}
        extra["exact_accuracy"] = generated.pop("exact_accuracy_by_task")
        extra.update(signatures)
        numbers.update(generated)
        reporter.log(f"ROUGE-L {numbers['rouge_l']:.3f}, BLEU {numbers['bleu']:.2f}, chrF {numbers['chrf']:.2f}")
    if spec.run_probes:
        extra["probe_accuracy"] = probe_metrics(model, tokenizer, spec)
        numbers["probe_accuracy"] = extra["probe_accuracy"]["all"]["accuracy"]
    interval_bounds = {key: interval.as_dict() for key, interval in intervals.items()}
    report = {
        "checkpoint": spec.checkpoint_path, "metrics": numbers, **extra,
        "intervals": interval_bounds,
        "bootstrap": {"resamples": spec.bootstrap_resamples, "confidence": spec.bootstrap_confidence,
                      "seed": spec.seed, "unit": {key: "block" if key == "perplexity" else "row" for key in intervals}},
        "thresholds": asdict(spec.thresholds),  # the bars this report was judged by
        "checks": spec.thresholds.judge(numbers, intervals=interval_bounds),
        "spec": spec.to_dict(),
    }
    write_evaluation_report(spec.output_dir, report=report, predictions=predictions)

    metadata: dict[str, Any] = {k: float(numbers.get(k, float("nan"))) for k in HEADLINE_KEYS}
    for key in INTERVAL_KEYS:
        bounds = interval_bounds.get(key, NO_INTERVAL.as_dict())
        metadata[f"{key}_ci_low"], metadata[f"{key}_ci_high"] = float(bounds["low"]), float(bounds["high"])
    metadata["num_samples"] = int(numbers.get("num_samples", 0))
    metadata["bleu_signature"] = str(extra.get("bleu_signature", ""))
    if predictions:
        metadata["worst_and_best_rows"] = md_metadata(worst_and_best_rows(predictions, 3))
    reporter.report_materialization(metadata=metadata)
    return report


def main(argv: list[str] | None = None) -> None:
    run_rank0_job(sys.argv[1:] if argv is None else argv, module="exp1_assets.evaluation.evaluate_job",
                  spec_class=EvalSpec, work=evaluate)


if __name__ == "__main__":
    main()
