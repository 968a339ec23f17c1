"""Evaluation, samples and the size comparison.

`evaluation_report` and `sample_set` are GPU work at real sizes, so they go through the launcher
like training. Both follow their checkpoint through declarative automation.
"""


import json
from typing import Any, Optional

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

from exp1_assets.code_versions import code_version
from exp1_assets.defs.config_overlay import given_fields
from exp1_assets.defs.data_assets import conversation_splits, packed_dataset
from exp1_assets.defs.launcher import JobLauncher, reported_metadata
from exp1_assets.defs.partitions import size_partitions
from exp1_assets.defs.store import ArtifactStore
from exp1_assets.defs.training_assets import model_checkpoint
from exp1_assets.evaluation.evaluate_job import EvalSpec
from exp1_assets.evaluation.sample_job import SampleSpec
from exp1_assets.evaluation.thresholds import CHECK_DESCRIPTIONS, Thresholds

class EvaluationConfig(Config):
    """Overrides of `EvalSpec` (and the experiment's `Thresholds`); unset fields keep their defaults."""

    num_samples: Optional[int] = Field(default=None, description="Test conversations to answer (0 = perplexity only)")
    max_new_tokens: Optional[int] = Field(default=None, description="Longest greedy answer, in tokens")
    generation_batch_size: Optional[int] = Field(default=None, description="Rows decoding together")
    max_eval_blocks: Optional[int] = Field(default=None, description="Validation blocks for perplexity (unset: all)")
    perplexity_threshold: Optional[float] = Field(default=None, description="Check: perplexity must be below (plan: 20)")
    rouge_l_threshold: Optional[float] = Field(default=None, description="Check: ROUGE-L must be above (plan: 0.3)")
    seed: Optional[int] = Field(
        default=None, description="Which test conversations are sampled, and the bootstrap's resamples")
    bootstrap_resamples: Optional[int] = Field(
        default=None, description="Bootstrap resamples behind each confidence interval (at least 100)")
    bootstrap_confidence: Optional[float] = Field(
        default=None, description="Coverage of the confidence intervals, in (0, 1)")

    def thresholds(self) -> Thresholds:
        given = {"perplexity_below": self.perplexity_threshold, "rouge_l_above": self.rouge_l_threshold}
        return Thresholds(**{k: v for k, v in given.items() if v is not None})


@asset(
    group_name="evaluation",
    partitions_def=size_partitions,
    deps=[model_checkpoint, conversation_splits, packed_dataset],
    pool="gpu",
    automation_condition=AutomationCondition.eager(),
    code_version=code_version("exp1_assets.evaluation.evaluate_job"),
    # Partitioned like the asset, so each size keeps its own result (else the UI shows only the latest size's).
    check_specs=[AssetCheckSpec(name, asset="evaluation_report", description=text, partitions_def=size_partitions)
                 for name, text in CHECK_DESCRIPTIONS.items()],
    description="Perplexity, bits per byte, ROUGE/BLEU/chrF, diversity and probes for one size.",
)
def evaluation_report(
    context: AssetExecutionContext, config: EvaluationConfig, store: ArtifactStore, launcher: JobLauncher
) -> MaterializeResult:
    size = context.partition_key
    checkpoint = store.checkpoint(size)
    run_dir = store.run_dir("evaluation_report", size)
    with store.staging("evaluation_report", size) as out:
        spec = EvalSpec(
            checkpoint_path=str(checkpoint), output_dir=str(out), run_dir=str(run_dir),
            validation_path=str(store.path("packed_dataset") / "validation.arrow"),
            test_path=str(store.path("conversation_splits") / "test.parquet"),
            thresholds=config.thresholds(),
            **given_fields(config, exclude=("perplexity_threshold", "rouge_l_threshold")),
        )
        reported = launcher.run(context, module="exp1_assets.evaluation.evaluate_job",
                                spec_path=spec.write(run_dir / "spec.json"), run_dir=run_dir, num_processes=1)
        report = json.loads((out / "report.json").read_text())
    metadata = reported_metadata(reported)
    metadata["report"] = MetadataValue.path(str(store.path("evaluation_report", size) / "report.md"))
    return MaterializeResult(
        metadata=metadata,
        check_results=[
            AssetCheckResult(
                check_name=name, passed=bool(report["checks"][name]["passed"]), severity=AssetCheckSeverity.WARN,
                metadata=_check_metadata(report["checks"][name]),
            )
            for name in CHECK_DESCRIPTIONS
        ],
    )


def _check_metadata(check: dict[str, Any]) -> dict[str, Any]:
    """The point estimate, the bar, the metric's interval and whether all of it clears the bar."""
    return {"value": _float(check["value"]), "threshold": _float(check["threshold"]),
            "ci_low": _float(check.get("low")), "ci_high": _float(check.get("high")),
            "interval_clears": bool(check.get("interval_clears", False))}


class SampleConfig(Config):
    """Overrides of `SampleSpec`; unset fields keep its defaults (the built-in prompt set included)."""

    prompts: Optional[list[dict[str, str]]] = Field(default=None, description="Inline {category, prompt} rows")
    prompts_path: Optional[str] = Field(default=None, description="Or a JSONL file of {category, prompt} rows")
    temperatures: Optional[list[float]] = Field(default=None, description="Every prompt at each temperature")
    variations: Optional[int] = Field(default=None, description="Samples per prompt and temperature")
    top_p: Optional[float] = Field(default=None, description="Nucleus sampling mass")
    repetition_penalty: Optional[float] = Field(default=None, description="Penalty on repeated tokens (1 = none)")
    max_new_tokens: Optional[int] = Field(default=None, description="Longest sample, in tokens")
    seed: Optional[int] = Field(default=None, description="Base seed (each temperature/variation derives its own)")


@asset(
    group_name="evaluation",
    partitions_def=size_partitions,
    deps=[model_checkpoint],
    pool="gpu",
    automation_condition=AutomationCondition.eager(),
    code_version=code_version("exp1_assets.evaluation.sample_job"),
    description="Seeded samples across prompt categories and temperatures, with analysis (JSONL/MD/HTML).",
)
def sample_set(
    context: AssetExecutionContext, config: SampleConfig, store: ArtifactStore, launcher: JobLauncher
) -> MaterializeResult:
    size = context.partition_key
    checkpoint = store.checkpoint(size)
    run_dir = store.run_dir("sample_set", size)
    with store.staging("sample_set", size) as out:
        spec = SampleSpec(checkpoint_path=str(checkpoint), output_dir=str(out), run_dir=str(run_dir),
                          **given_fields(config))
        reported = launcher.run(context, module="exp1_assets.evaluation.sample_job",
                                spec_path=spec.write(run_dir / "spec.json"), run_dir=run_dir, num_processes=1)
    metadata = reported_metadata(reported)
    metadata["html"] = MetadataValue.path(str(store.path("sample_set", size) / "samples.html"))
    return MaterializeResult(metadata=metadata)


def _float(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) else float("nan")
