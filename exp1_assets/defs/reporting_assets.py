"""Reporting across sizes: the size comparison.

It only reads small JSON files and draws plots, so it runs here (not through the launcher), and
follows its upstream through declarative automation.
"""

import json
from pathlib import Path

from dagster import AssetExecutionContext, AutomationCondition, MaterializeResult, MetadataValue, asset

from exp1_assets.code_versions import code_version
from exp1_assets.defs.evaluation_assets import evaluation_report, sample_set
from exp1_assets.defs.store import ArtifactStore
from exp1_assets.defs.training_assets import model_checkpoint
from exp1_assets.markdown import png_markdown
from exp1_assets.sizes import SIZES


@asset(
    group_name="reporting",
    deps=[evaluation_report, sample_set, model_checkpoint],
    automation_condition=AutomationCondition.eager(),
    code_version=code_version("exp1_assets.evaluation.comparison"),
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
        **{f"plot_{name}": MetadataValue.md(png_markdown(final / Path(path).name, alt=name))
           for name, path in summary["plot_paths"].items() if (final / Path(path).name).exists()},
        "report": MetadataValue.path(str(final / "comparison.md")),
    })
