"""Reporting across sizes: the size comparison and its report card.

It only reads small JSON files and draws plots, so it runs here (not through the launcher), and
follows its upstream through declarative automation. Every input file is optional: a size that
is not trained, evaluated or benchmarked yet is listed as such (exp1_assets.evaluation.comparison).
"""

import json
import os
from pathlib import Path

from dagster import AssetExecutionContext, AutomationCondition, MaterializeResult, MetadataValue, asset

from exp1_assets.code_versions import code_version
from exp1_assets.defs.benchmark_assets import benchmark_report
from exp1_assets.defs.evaluation_assets import evaluation_report, sample_set
from exp1_assets.defs.report_card_assets import report_card
from exp1_assets.defs.store import ArtifactStore
from exp1_assets.defs.training_assets import model_checkpoint
from exp1_assets.markdown import png_markdown
from exp1_assets.sizes import SIZES


@asset(
    group_name="reporting",
    # report_card: the comparison card links each size's card, so `--select '*'` builds those first.
    deps=[evaluation_report, sample_set, model_checkpoint, benchmark_report, report_card],
    automation_condition=AutomationCondition.eager(),
    code_version=code_version("exp1_assets.evaluation.comparison", "exp1_assets.evaluation.report_card"),
    description="All evaluated sizes side by side: table with intervals and benchmarks, loss curves, "
                "metrics vs parameters with error bars, and a power-law fit of validation loss vs parameters.",
)
def size_comparison(context: AssetExecutionContext, store: ArtifactStore) -> MaterializeResult:
    from exp1_assets.evaluation.comparison import compare_sizes
    from exp1_assets.evaluation.report_card import comparison_card, size_card, write_card
    from exp1_assets.evaluation.scaling import scaling_metadata

    reports, training, histories, benchmarks = {}, {}, {}, {}
    for size in SIZES:
        report = store.path("evaluation_report", size) / "report.json"
        checkpoint = store.path("model_checkpoint", size)
        benchmark = store.path("benchmark_report", size) / "benchmarks.json"
        if report.exists():
            reports[size] = json.loads(report.read_text())
        if (checkpoint / "train_result.json").exists():
            training[size] = json.loads((checkpoint / "train_result.json").read_text())
            histories[size] = json.loads((checkpoint / "log_history.json").read_text())
        if benchmark.exists():
            benchmarks[size] = json.loads(benchmark.read_text())
    with store.staging("size_comparison") as out:
        summary = compare_sizes(reports=reports, training=training, loss_histories=histories,
                                benchmarks=benchmarks, out_dir=out, all_sizes=list(SIZES))
        present = [row["size"] for row in summary["rows"]]
        card = comparison_card(
            [size_card(size=s, report=reports.get(s), training=training.get(s), benchmarks=benchmarks.get(s),
                       role=SIZES[s].role, note=SIZES[s].note) for s in present],
            scaling=summary["scaling"],
            # Relative links, so the pages still work after the artifact root moves.
            card_dirs={s: os.path.relpath(store.path("report_card", s), store.path("size_comparison"))
                       for s in present if (store.path("report_card", s) / "card.md").exists()})
        write_card(out, card)
    final = store.path("size_comparison")
    scaling = scaling_metadata(summary["scaling"])
    context.log.info(f"size comparison: {final / 'comparison.md'}; scaling: {scaling['scaling_fit']}")
    return MaterializeResult(metadata={
        "sizes": summary["num_sizes"],
        "missing_sizes": ", ".join(summary["missing_sizes"]) or "none",
        "table": MetadataValue.md(summary["table_markdown"] or "(no sizes evaluated yet)"),
        **scaling,
        **{f"plot_{name}": MetadataValue.md(png_markdown(final / Path(path).name, alt=name))
           for name, path in summary["plot_paths"].items() if (final / Path(path).name).exists()},
        "report": MetadataValue.path(str(final / "comparison.md")),
        "verdict": MetadataValue.text(card.verdict),
        "card": MetadataValue.path(str(final / "card.md")),
        "card_html": MetadataValue.path(str(final / "card.html")),
    })
