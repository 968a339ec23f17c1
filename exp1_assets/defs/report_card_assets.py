"""The report card of one size: the verdict in plain words and the numbers behind it.

It reads small JSON files that other assets wrote (report.json, train_result.json,
benchmarks.json) and writes two pages, so it runs here, not through the launcher, and follows its
upstream through declarative automation.
"""

import json
import os
from pathlib import Path
from typing import Any, Optional

from dagster import AssetExecutionContext, AutomationCondition, MaterializeResult, MetadataValue, asset

from exp1_assets.code_versions import code_version
from exp1_assets.defs.benchmark_assets import benchmark_report
from exp1_assets.defs.evaluation_assets import evaluation_report, sample_set
from exp1_assets.defs.partitions import size_partitions
from exp1_assets.defs.store import ArtifactStore
from exp1_assets.defs.training_assets import model_checkpoint
from exp1_assets.evaluation.report_card import render_markdown, size_card, write_card
from exp1_assets.sizes import SIZES


@asset(
    group_name="reporting",
    partitions_def=size_partitions,
    # sample_set: the card links its samples.html, so a new sample set refreshes the link.
    deps=[evaluation_report, model_checkpoint, benchmark_report, sample_set],
    automation_condition=AutomationCondition.eager(),
    code_version=code_version("exp1_assets.evaluation.report_card"),
    description="One page per size (Markdown + HTML): which of the plan's bars are met with their 95% CIs, "
                "exact-answer accuracy, benchmarks against chance, then the numbers.",
)
def report_card(context: AssetExecutionContext, store: ArtifactStore) -> MaterializeResult:
    size = context.partition_key
    report_path = store.path("evaluation_report", size) / "report.json"
    if not report_path.exists():
        raise FileNotFoundError(f"{report_path} is missing: materialize evaluation_report[{size}] first")
    final = store.path("report_card", size)
    targets = {"evaluation report": store.path("evaluation_report", size) / "report.md",
               "samples": store.path("sample_set", size) / "samples.html",
               "benchmarks": store.path("benchmark_report", size) / "benchmarks.md"}
    card = size_card(
        size=size, report=json.loads(report_path.read_text()),
        training=_json_or_none(store.path("model_checkpoint", size) / "train_result.json"),
        benchmarks=_json_or_none(store.path("benchmark_report", size) / "benchmarks.json"),
        role=SIZES[size].role, note=SIZES[size].note,
        # Relative to the card's folder, so the pages still link after the artifact root moves.
        links={label: os.path.relpath(path, final) if path.exists() else None for label, path in targets.items()},
    )
    with store.staging("report_card", size) as out:
        write_card(out, card)
    context.log.info(f"report card: {final / 'card.md'}: {card.verdict}")
    return MaterializeResult(metadata={
        "verdict": MetadataValue.text(card.verdict),
        "card": MetadataValue.path(str(final / "card.md")),
        "card_html": MetadataValue.path(str(final / "card.html")),
        "card_preview": MetadataValue.md(render_markdown(card)),
    })


def _json_or_none(path: Path) -> Optional[Any]:
    """The file's JSON, or None when the upstream has not written it (the card says "not measured")."""
    return json.loads(path.read_text()) if path.exists() else None
