"""The benchmark job: `python -m exp1_assets.evaluation.benchmark_job spec.json`.

Runs EleutherAI's lm-evaluation-harness on one checkpoint, under `accelerate launch` (one
process; only global rank 0 works). The tasks are a named preset or an explicit list, found
among lm-eval's own tasks, the package's built-in offline tasks (`benchmark_data.py`) and the
user's task folders (`include_path`):
- `builtin` (the default, offline): `exp1_answer_choice` (multiple choice) and
  `exp1_arithmetic_exact` (generated exact match), built from the held-out test split;
- `standard` (needs the Hub): hellaswag, arc_easy, arc_challenge, piqa, winogrande, the
  zero-shot suite small-model papers report (add `mmlu` with an explicit task list).
Outputs go to `output_dir`: benchmarks.json (per task accuracy, stderr, chance, above_chance;
docs/artifacts.md), benchmarks.md, samples/<task>.jsonl (lm-eval's per-doc records) and, for the
built-in tasks, tasks/<task>.yaml + .jsonl (rerun with `cd tasks && lm_eval --include_path . ...`).
The asset's check is computed by the asset from benchmarks.json, not reported from here.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from exp1_assets.evaluation.benchmark_data import BUILTIN_TASKS, make_relocatable, write_builtin_tasks
from exp1_assets.evaluation.benchmark_lookup import load_tasks, task_manager
from exp1_assets.evaluation.benchmark_results import benchmarks_markdown, benchmarks_table, summarize
from exp1_assets.evaluation.job_common import (
    JsonSpec, load_checkpoint, md_metadata, require_non_negative_int, require_path, require_positive,
    resolve_device, run_rank0_job,
)
from exp1_assets.evaluation.reports import json_safe, write_json, write_text
from exp1_assets.runtime import Reporter

Preset = Literal["builtin", "standard"]
PRESETS: dict[str, tuple[str, ...]] = {
    "builtin": BUILTIN_TASKS,
    "standard": ("hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande"),
}
# Bootstrap serves only metrics this report does not headline (bleu, f1, ...: accuracies have a
# closed-form stderr); lm-eval's default of 100,000 resamples takes minutes on those.
BOOTSTRAP_ITERS = 1000


@dataclass(frozen=True)
class BenchmarkSpec(JsonSpec):
    checkpoint_path: str
    """The model_checkpoint folder (from_pretrained model + tokenizer with its chat template)."""
    test_path: str
    """conversation_splits/test.parquet: the built-in tasks' docs come from it."""
    output_dir: str
    """Where benchmarks.json/.md, samples/ and tasks/ are written."""
    run_dir: str
    """Scratch kept between runs: errors/rank<N>.txt, the datasets cache."""
    preset: Preset = "builtin"
    """The task list when `tasks` is None: 'builtin' (offline) or 'standard' (Hub datasets)."""
    tasks: tuple[str, ...] | None = None
    """lm-eval task, group or tag names, instead of the preset; None: the preset's."""
    include_path: tuple[str, ...] = ()
    """Folders of the user's own task YAMLs (lm-eval's include_path)."""
    builtin_docs: int = 100
    """Docs per built-in task (fewer when the test split has fewer single-turn rows of its families)."""
    limit: int | None = None
    """At most this many docs per task (lm-eval's limit); None: every doc."""
    batch_size: int = 64
    """Requests per forward pass. On `tiny` (2 CPU cores) 64 scored the built-in multiple-choice
    requests in 8 s, 16 in 22 s; the numbers are the same."""
    apply_chat_template: bool = True
    """Render prompts with the checkpoint's chat template (ChatML), as the model was trained."""
    seed: int = 0
    """Which test rows become built-in docs, and their distractors."""
    device: str = "auto"
    """'auto' (CUDA when there is one), 'cpu', 'cuda' or 'cuda:N'."""

    def __post_init__(self) -> None:
        for name in ("checkpoint_path", "test_path", "output_dir", "run_dir"):
            require_path(name, getattr(self, name))
        if self.preset not in PRESETS:
            raise ValueError(f"preset: must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.tasks is not None:
            if not self.tasks or not all(isinstance(t, str) and t.strip() for t in self.tasks):
                raise ValueError(f"tasks: must be non-empty task names (or unset for the preset), got {self.tasks!r}")
            if len(set(self.tasks)) != len(self.tasks):
                raise ValueError(f"tasks: names a task twice: {self.tasks!r}")
        for path in self.include_path:
            require_path("include_path", path)
        for name in ("builtin_docs", "batch_size"):
            require_positive(name, getattr(self, name))
            require_non_negative_int(name, getattr(self, name))
        if self.limit is not None:
            require_positive("limit", self.limit)
            require_non_negative_int("limit", self.limit)
        require_non_negative_int("seed", self.seed)
        if not isinstance(self.apply_chat_template, bool):
            raise ValueError(f"apply_chat_template: must be true or false, got {self.apply_chat_template!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device: must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    def task_names(self) -> tuple[str, ...]:
        return self.tasks if self.tasks is not None else PRESETS[self.preset]


def _write_samples(out: Path, samples: dict[str, list[dict[str, Any]]]) -> None:
    """lm-eval's logged samples per task, one JSON line per doc (docs may hold non-JSON values)."""
    for task, rows in samples.items():
        lines = (json.dumps(json_safe(row), ensure_ascii=False, default=str) + "\n" for row in rows)
        write_text(out / "samples" / f"{task}.jsonl", "".join(lines))


def run_benchmarks(spec: BenchmarkSpec, *, reporter: Reporter) -> dict[str, Any]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    started = time.perf_counter()
    out, names = Path(spec.output_dir), list(spec.task_names())
    include = [str(Path(p).expanduser().resolve()) for p in spec.include_path]
    builtin = [name for name in names if name in BUILTIN_TASKS]
    if builtin:
        tasks_dir = write_builtin_tasks(builtin, test_path=spec.test_path, out_dir=out / "tasks",
                                        cache_dir=Path(spec.run_dir) / "datasets_cache",
                                        docs_per_task=spec.builtin_docs, seed=spec.seed)
        include.insert(0, str(tasks_dir))  # later folders win a name clash: a user task may replace ours
    manager = task_manager(names, include_paths=include)
    tasks = load_tasks(manager, names)  # before the model: a missing dataset fails in seconds
    device = resolve_device(spec.device)
    model, tokenizer = load_checkpoint(spec.checkpoint_path, device=device)
    reporter.log(f"benchmarking {spec.checkpoint_path} on {device}: {', '.join(names)}")
    results = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec.batch_size),
        tasks=tasks, task_manager=manager, limit=spec.limit, apply_chat_template=spec.apply_chat_template,
        log_samples=True, bootstrap_iters=BOOTSTRAP_ITERS,
    )
    summary = summarize(results, results["samples"])
    report = {"checkpoint": spec.checkpoint_path, "lm_eval_version": lm_eval.__version__,
              "tasks_requested": names, "include_path": list(spec.include_path), "tasks": summary,
              "seconds": time.perf_counter() - started, "settings": spec.to_dict()}
    _write_samples(out, results["samples"])
    if builtin:
        make_relocatable(builtin, out_dir=out / "tasks")
    write_json(out / "benchmarks.json", report)
    write_text(out / "benchmarks.md", benchmarks_markdown(report))
    for name, entry in summary.items():
        stderr, chance = (entry[k] if entry[k] is not None else float("nan") for k in ("stderr", "chance"))
        reporter.log(f"{name}: {entry['metric']} {entry['value']:.4f} ± {stderr:.4f} (chance {chance:.4f})")
    reporter.report_materialization(metadata=benchmark_metadata(report))
    return report


def benchmark_metadata(report: dict[str, Any]) -> dict[str, Any]:
    """The asset's metadata: the table, and per task its value, stderr and chance (NaN: none)."""
    nan = float("nan")
    metadata: dict[str, Any] = {
        "table": md_metadata(benchmarks_table(report["tasks"])),
        "tasks": len(report["tasks"]),
        "tasks_above_chance": sum(bool(t["above_chance"]) for t in report["tasks"].values()),
        "lm_eval_version": report["lm_eval_version"], "seconds": float(report["seconds"]),
    }
    for name, entry in report["tasks"].items():
        metadata[f"{name}/{entry['metric']}"] = float(entry["value"])
        metadata[f"{name}/stderr"] = nan if entry["stderr"] is None else float(entry["stderr"])
        metadata[f"{name}/chance"] = nan if entry["chance"] is None else float(entry["chance"])
        metadata[f"{name}/samples"] = int(entry["samples"])
    return metadata


def main(argv: list[str] | None = None) -> None:
    run_rank0_job(sys.argv[1:] if argv is None else argv, module="exp1_assets.evaluation.benchmark_job",
                  spec_class=BenchmarkSpec, work=run_benchmarks)


if __name__ == "__main__":
    main()
