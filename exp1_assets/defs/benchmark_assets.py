"""`benchmark_report[size]`: EleutherAI's lm-evaluation-harness on a checkpoint, through the launcher.

GPU work at real sizes, so it runs like evaluation (`gpu` pool, one process) and follows its
checkpoint through declarative automation. The default preset is the package's offline tasks,
so the whole graph stays offline; `preset: standard` runs the Hub benchmarks small-model
papers report. A WARN check flags tasks whose accuracy is not above chance by 2 stderr.
"""

import hashlib
import json
from typing import Literal, Optional

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
from exp1_assets.defs.config_overlay import given_fields, library_default
from exp1_assets.defs.data_assets import conversation_splits
from exp1_assets.defs.launcher import JobLauncher, reported_metadata
from exp1_assets.defs.partitions import size_partitions
from exp1_assets.defs.store import ArtifactStore
from exp1_assets.defs.training_assets import model_checkpoint
from exp1_assets.hashing import directory_digest
from exp1_assets.evaluation.benchmark_data import TEMPLATES
from exp1_assets.evaluation.benchmark_job import BenchmarkSpec
from exp1_assets.evaluation.benchmark_results import benchmarks_table

JOB = "exp1_assets.evaluation.benchmark_job"
CHECK = "benchmarks_above_chance"


def _code_version() -> str:
    """The job's modules (`code_version`) and the built-in task YAMLs it fills in: both are its code."""
    joined = code_version(JOB) + directory_digest(TEMPLATES, pattern="*.yaml")
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


class BenchmarkConfig(Config):
    """Overrides of `BenchmarkSpec`; unset fields keep its defaults (the offline `builtin` preset)."""

    preset: Literal["builtin", "standard"] = Field(
        default=library_default(BenchmarkSpec, "preset"),
        description="builtin: the package's offline tasks from the test split; standard: hellaswag, arc_easy, "
                    "arc_challenge, piqa, winogrande (their datasets are on the Hugging Face Hub)")
    tasks: Optional[list[str]] = Field(
        default=None, description="lm-eval task/group/tag names instead of the preset (e.g. with mmlu); unset: preset")
    include_path: Optional[list[str]] = Field(
        default=None, description="Folders of your own task YAMLs (e.g. dataset_path: json with local data_files)")
    builtin_docs: Optional[int] = Field(default=None, description="Docs per built-in task, from the test split")
    limit: Optional[int] = Field(default=None, description="At most this many docs per task (unset: every doc)")
    batch_size: Optional[int] = Field(default=None, description="Requests per forward pass")
    apply_chat_template: Optional[bool] = Field(
        default=None, description="Render prompts with the checkpoint's chat template (default: yes)")
    seed: Optional[int] = Field(default=None, description="Which test rows become built-in docs, and their distractors")


@asset(
    group_name="evaluation",
    partitions_def=size_partitions,
    deps=[model_checkpoint, conversation_splits],
    pool="gpu",
    automation_condition=AutomationCondition.eager(),
    code_version=_code_version(),
    check_specs=[AssetCheckSpec(CHECK, asset="benchmark_report", partitions_def=size_partitions,
                                description="Every benchmark's accuracy is above chance by 2 standard errors")],
    description="lm-evaluation-harness benchmarks (accuracy, stderr, chance level) for one size.",
)
def benchmark_report(
    context: AssetExecutionContext, config: BenchmarkConfig, store: ArtifactStore, launcher: JobLauncher
) -> MaterializeResult:
    size = context.partition_key
    checkpoint = store.checkpoint(size)
    run_dir = store.run_dir("benchmark_report", size)
    with store.staging("benchmark_report", size) as out:
        spec = BenchmarkSpec(
            checkpoint_path=str(checkpoint), output_dir=str(out), run_dir=str(run_dir),
            test_path=str(store.path("conversation_splits") / "test.parquet"), **given_fields(config),
        )
        reported = launcher.run(context, module=JOB, spec_path=spec.write(run_dir / "spec.json"),
                                run_dir=run_dir, num_processes=1)
        report = json.loads((out / "benchmarks.json").read_text())
    metadata = reported_metadata(reported)
    metadata["report"] = MetadataValue.path(str(store.path("benchmark_report", size) / "benchmarks.md"))
    below = {name: t for name, t in report["tasks"].items() if not t["above_chance"]}
    return MaterializeResult(
        metadata=metadata,
        check_results=[AssetCheckResult(
            check_name=CHECK, passed=not below, severity=AssetCheckSeverity.WARN,
            metadata={"tasks": len(report["tasks"]), "not_above_chance": sorted(below),
                      "table": MetadataValue.md(benchmarks_table(below) if below else "every task is above chance")},
        )],
    )
