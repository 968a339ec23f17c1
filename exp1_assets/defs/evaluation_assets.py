"""Evaluation, samples and the size comparison.

`evaluation_report` and `sample_set` are GPU work at real sizes, so they go through the launcher
like training. `size_comparison` only reads small JSON files and draws three plots: it runs here.
All three follow their upstream through declarative automation.
"""


import json
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AutomationCondition,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from exp1_assets.defs.data_assets import conversation_splits, packed_dataset
from exp1_assets.defs.launcher import JobLauncher
from exp1_assets.defs.partitions import size_partitions
from exp1_assets.defs.store import ArtifactStore
from exp1_assets.defs.training_assets import model_checkpoint
from exp1_assets.defs.versions import code_version
from exp1_assets.sizes import SIZES

CHECKS = {"perplexity_below_threshold": "Perplexity on validation assistant tokens < threshold (plan: 20)",
          "rouge_l_above_threshold": "ROUGE-L of greedy answers on test prompts > threshold (plan: 0.3)"}


class EvaluationConfig(Config):
    num_samples: int = Field(default=1000, description="Test conversations to answer (0 = perplexity only)")
    max_new_tokens: int = 128
    generation_batch_size: int = 64  # rows decoding together (bench/RESULTS.md)
    max_eval_blocks: int = Field(default=0, description="Validation blocks for perplexity (0 = all)")
    perplexity_threshold: float = 20.0
    rouge_l_threshold: float = 0.3
    seed: int = 0


@asset(
    group_name="evaluation",
    partitions_def=size_partitions,
    deps=[model_checkpoint, conversation_splits, packed_dataset],
    pool="gpu",
    automation_condition=AutomationCondition.eager(),
    code_version=code_version("evaluation/evaluate_job.py", "evaluation/metrics.py",
                              "evaluation/generation.py", "evaluation/reports.py", "evaluation/prompts.py"),
    check_specs=[AssetCheckSpec(name, asset="evaluation_report", description=text) for name, text in CHECKS.items()],
    description="Perplexity, bits per byte, ROUGE/BLEU/chrF, diversity and probes for one size.",
)
def evaluation_report(
    context: AssetExecutionContext, config: EvaluationConfig, store: ArtifactStore, launcher: JobLauncher
) -> MaterializeResult:
    from exp1_assets.evaluation.evaluate_job import EvalSpec

    size = context.partition_key
    checkpoint = _require_checkpoint(store, size)
    run_dir = store.run_dir("evaluation_report", size)
    with store.staging("evaluation_report", size) as out:
        spec = EvalSpec(
            checkpoint_path=str(checkpoint), output_dir=str(out), run_dir=str(run_dir),
            validation_path=str(store.path("packed_dataset") / "validation.arrow"),
            test_path=str(store.path("conversation_splits") / "test.parquet"),
            num_samples=config.num_samples, max_new_tokens=config.max_new_tokens,
            generation_batch_size=config.generation_batch_size, max_eval_blocks=config.max_eval_blocks,
            perplexity_threshold=config.perplexity_threshold, rouge_l_threshold=config.rouge_l_threshold,
            seed=config.seed,
        )
        reported = launcher.run(context, module="exp1_assets.evaluation.evaluate_job",
                                spec_path=spec.write(run_dir / "spec.json"), run_dir=run_dir, num_processes=1)
        report = json.loads((out / "report.json").read_text())
    metadata = _reported_metadata(reported)
    metadata["report"] = MetadataValue.path(str(store.path("evaluation_report", size) / "report.md"))
    return MaterializeResult(
        metadata=metadata,
        check_results=[
            AssetCheckResult(
                check_name=name, passed=bool(report["checks"][name]["passed"]), severity=AssetCheckSeverity.WARN,
                metadata={"value": _float(report["checks"][name]["value"]),
                          "threshold": _float(report["checks"][name]["threshold"])},
            )
            for name in CHECKS
        ],
    )


class SampleConfig(Config):
    prompts: list[dict[str, str]] = Field(default_factory=list, description="Inline {category, prompt} rows")
    prompts_path: str = Field(default="", description="Or a JSONL file of {category, prompt} rows")
    temperatures: list[float] = Field(default_factory=lambda: [0.7, 0.85, 1.0])
    variations: int = 3
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    max_new_tokens: int = 128
    seed: int = 0


@asset(
    group_name="evaluation",
    partitions_def=size_partitions,
    deps=[model_checkpoint],
    pool="gpu",
    automation_condition=AutomationCondition.eager(),
    code_version=code_version("evaluation/sample_job.py", "evaluation/generation.py", "evaluation/prompts.py",
                              "evaluation/sample_analysis.py", "evaluation/reports.py"),
    description="Seeded samples across prompt categories and temperatures, with analysis (JSONL/MD/HTML).",
)
def sample_set(
    context: AssetExecutionContext, config: SampleConfig, store: ArtifactStore, launcher: JobLauncher
) -> MaterializeResult:
    from exp1_assets.evaluation.sample_job import SampleSpec

    size = context.partition_key
    checkpoint = _require_checkpoint(store, size)
    run_dir = store.run_dir("sample_set", size)
    with store.staging("sample_set", size) as out:
        spec = SampleSpec(
            checkpoint_path=str(checkpoint), output_dir=str(out), run_dir=str(run_dir),
            prompts=tuple(config.prompts) if config.prompts else None, prompts_path=config.prompts_path,
            temperatures=tuple(config.temperatures), variations=config.variations, top_p=config.top_p,
            repetition_penalty=config.repetition_penalty, max_new_tokens=config.max_new_tokens, seed=config.seed,
        )
        reported = launcher.run(context, module="exp1_assets.evaluation.sample_job",
                                spec_path=spec.write(run_dir / "spec.json"), run_dir=run_dir, num_processes=1)
    metadata = _reported_metadata(reported)
    metadata["html"] = MetadataValue.path(str(store.path("sample_set", size) / "samples.html"))
    return MaterializeResult(metadata=metadata)


@asset(
    group_name="reporting",
    deps=[evaluation_report, sample_set, model_checkpoint],
    automation_condition=AutomationCondition.eager(),
    code_version=code_version("evaluation/comparison.py"),
    description="All evaluated sizes side by side: table, loss curves, perplexity/ROUGE-L vs parameters.",
)
def size_comparison(context: AssetExecutionContext, store: ArtifactStore) -> MaterializeResult:
    from exp1_assets.evaluation.comparison import compare_sizes

    reports, training, histories = {}, {}, {}
    for size in SIZES:
        report = store.path("evaluation_report", size) / "report.json"
        checkpoint = store.path("model_checkpoint", size)
        if report.exists():
            reports[size] = json.loads(report.read_text())
        if (checkpoint / "train_result.json").exists():
            training[size] = json.loads((checkpoint / "train_result.json").read_text())
            histories[size] = json.loads((checkpoint / "log_history.json").read_text())
    with store.staging("size_comparison") as out:
        summary = compare_sizes(reports=reports, training=training, loss_histories=histories,
                                out_dir=out, all_sizes=list(SIZES))
    final = store.path("size_comparison")
    context.log.info(f"size comparison: {final / 'comparison.md'}")
    return MaterializeResult(metadata={
        "sizes": summary["num_sizes"],
        "missing_sizes": ", ".join(summary["missing_sizes"]) or "none",
        "table": MetadataValue.md(summary["table_markdown"] or "(no sizes evaluated yet)"),
        **{f"plot_{name}": MetadataValue.md(_png_md(final / Path(path).name, name))
           for name, path in summary["plot_paths"].items() if (final / Path(path).name).exists()},
        "report": MetadataValue.path(str(final / "comparison.md")),
    })


def _require_checkpoint(store: ArtifactStore, size: str) -> Path:
    path = store.path("model_checkpoint", size)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no model: materialize model_checkpoint[{size}] first")
    return path


def _reported_metadata(reported: list[Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for item in reported:
        metadata.update(item.metadata or {})
    return metadata


def _png_md(path: Path, alt: str) -> str:
    from exp1_assets.data.length_stats import png_markdown

    return png_markdown(path, alt=alt)


def _float(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) else float("nan")
