"""The graph as a researcher uses it: `dagster dev`, its GraphQL API, and its web UI in Chromium.

One `dagster dev` (webserver + daemon, a copy of scripts/dagster.yaml) serves the whole module.
The whole graph is materialized for partition `tiny` through the same GraphQL mutation the UI's
"Materialize" button sends, with the FAST run config; then the tests read the results back
through GraphQL and look at them in headless Chromium (Debian's; Playwright never downloads one).
Screenshots land in test-artifacts/.

The UI keeps rendering after the network goes quiet, so every read of a page is a Playwright
`expect(...)` assertion, which retries until it holds (or its timeout ends): nothing reads a count
or a text at one instant.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from exp1_assets_tests.dagster_dev import DagsterDev, dagster_dev  # noqa: F401 (the fixture)
from exp1_assets_tests.graphql_client import (
    ASSETS, CHECK_PARTITIONS, CHECKS, GROUPS, MATERIALIZATIONS, RUN_STATUS, check_executions, launch_whole_graph,
    run_messages, wait_for_run,
)
from exp1_assets_tests.run_configs import fast_run_config

EVAL_CHECKS = ["perplexity_below_threshold", "rouge_l_above_threshold"]
# The checks of the size-partitioned assets are partitioned by size too: one result per size.
PARTITIONED_CHECKS = {"model_checkpoint": ["loss_finite", "validation_loss_decreased"], "evaluation_report": EVAL_CHECKS}
CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that phones home: the test machine has no internet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

@pytest.fixture(scope="module")
def whole_graph_run(dagster_dev: DagsterDev) -> str:  # noqa: F811
    """The whole graph for `tiny`, launched and finished through GraphQL; its run id."""
    run_id = launch_whole_graph(dagster_dev, partition="tiny", run_config=fast_run_config())
    run = wait_for_run(dagster_dev, run_id, timeout_s=300)
    if run["status"] != "SUCCESS":
        failures = [m["message"] for m in run_messages(dagster_dev, run_id) if "rror" in m["message"]]
        pytest.fail(f"run {run_id} ended {run['status']}: {run['stepStats']}\n" + "\n".join(failures[-5:]))
    return run_id


# --- GraphQL ------------------------------------------------------------------------------


def test_whole_graph_run_materializes_every_asset(dagster_dev: DagsterDev, whole_graph_run: str) -> None:  # noqa: F811
    steps = dagster_dev.graphql(RUN_STATUS, {"runId": whole_graph_run})["runOrError"]["stepStats"]
    assert {s["stepKey"]: s["status"] for s in steps} == {name: "SUCCESS" for name in ASSETS}
    for name in ASSETS:
        partitions = ["tiny"] if name in ("model_checkpoint", "evaluation_report", "sample_set", "benchmark_report",
                                          "report_card") else None
        asset = dagster_dev.graphql(MATERIALIZATIONS, {"path": [name], "partitions": partitions})["assetOrError"]
        [latest] = asset["assetMaterializations"]
        assert latest["runId"] == whole_graph_run
        assert latest["partition"] == (partitions[0] if partitions else None)


def test_gpu_pool_kept_gpu_steps_apart(dagster_dev: DagsterDev, whole_graph_run: str) -> None:  # noqa: F811
    # evaluation_report, sample_set and benchmark_report become ready together when model_checkpoint
    # ends, and the multiprocess executor would run them at once; the `gpu` pool (limit 1) must serialize them.
    steps = dagster_dev.graphql(RUN_STATUS, {"runId": whole_graph_run})["runOrError"]["stepStats"]
    gpu = sorted((s["startTime"], s["endTime"], s["stepKey"]) for s in steps
                 if s["stepKey"] in ("model_checkpoint", "evaluation_report", "sample_set", "benchmark_report"))
    assert len(gpu) == 4
    for (_, end, first), (start, _, second) in zip(gpu, gpu[1:]):
        assert start >= end, f"{second} started {end - start:.1f} s before {first} ended"


def test_evaluation_metrics_read_back_through_graphql(dagster_dev: DagsterDev, whole_graph_run: str) -> None:  # noqa: F811
    asset = dagster_dev.graphql(MATERIALIZATIONS, {"path": ["evaluation_report"], "partitions": ["tiny"]})
    [materialization] = asset["assetOrError"]["assetMaterializations"]
    entries = {e["label"]: e for e in materialization["metadataEntries"]}
    for metric in ("perplexity", "rouge_l", "bleu"):
        assert entries[metric]["__typename"] == "FloatMetadataEntry", entries.get(metric)
        assert isinstance(entries[metric]["floatValue"], float)
    assert entries["perplexity"]["floatValue"] > 1.0  # exp(mean NLL) of a real model
    assert 0.0 <= entries["rouge_l"]["floatValue"] <= 1.0
    assert entries["num_samples"]["intValue"] == 16  # FAST config reached the launched job
    assert Path(entries["report"]["path"]).is_relative_to(dagster_dev.exp1_home)


def test_evaluation_checks_executed_with_values(dagster_dev: DagsterDev, whole_graph_run: str) -> None:  # noqa: F811
    node = dagster_dev.graphql(CHECKS, {"path": ["evaluation_report"]})["assetNodeOrError"]
    checks = {c["name"]: c for c in node["assetChecksOrError"]["checks"]}
    assert sorted(checks) == EVAL_CHECKS
    for name in EVAL_CHECKS:
        execution = checks[name]["executionForLatestMaterialization"]
        assert execution["runId"] == whole_graph_run
        assert execution["status"] in ("SUCCEEDED", "FAILED"), execution  # evaluated, not skipped/errored
        evaluation = execution["evaluation"]
        assert evaluation["severity"] == "WARN"
        values = {e["label"]: e.get("floatValue", e.get("boolValue")) for e in evaluation["metadataEntries"]}
        assert set(values) == {"value", "threshold", "ci_low", "ci_high", "interval_clears"}
        # The interval is the metric's, so it brackets the point estimate the check judged.
        assert values["ci_low"] <= values["value"] <= values["ci_high"]
        assert isinstance(values["interval_clears"], bool)
        assert evaluation["success"] == (execution["status"] == "SUCCEEDED")
    assert {e["label"]: e.get("floatValue") for e in
            checks["perplexity_below_threshold"]["executionForLatestMaterialization"]["evaluation"]["metadataEntries"]
            }["threshold"] == 20.0


def test_checks_of_partitioned_assets_keep_one_result_per_size(
    dagster_dev: DagsterDev, whole_graph_run: str  # noqa: F811
) -> None:
    for asset, names in PARTITIONED_CHECKS.items():
        for name in names:
            [execution] = check_executions(dagster_dev, asset, name, partition="tiny")
            assert execution["runId"] == whole_graph_run
            assert execution["status"] in ("SUCCEEDED", "FAILED"), execution  # evaluated, not skipped/errored
            assert execution["partition"] == execution["evaluation"]["partition"] == "tiny"
            assert check_executions(dagster_dev, asset, name, partition="125M") == [], (asset, name)
            assert check_executions(dagster_dev, asset, name, partition="") == [], (asset, name)  # none unpartitioned

        node = dagster_dev.graphql(CHECK_PARTITIONS, {"path": [asset]})["assetNodeOrError"]
        statuses = {c["name"]: c["partitionStatuses"] for c in node["assetChecksOrError"]["checks"]}
        assert sorted(statuses) == sorted(names)
        for name, status in statuses.items():
            assert status["__typename"] == "AssetCheckDefaultPartitionStatuses", (asset, name, status)
            assert sorted(status["succeededPartitions"] + status["failedPartitions"]) == ["tiny"], (asset, name)
            assert status["inProgressPartitions"] == status["skippedPartitions"] == [], (asset, name)
            assert status["executionFailedPartitions"] == [], (asset, name)


def test_training_progress_reaches_the_run_log(dagster_dev: DagsterDev, whole_graph_run: str) -> None:  # noqa: F811
    messages = [m["message"] for m in run_messages(dagster_dev, whole_graph_run) if m["stepKey"] == "model_checkpoint"]
    progress = [m for m in messages if re.match(r"step \d+/12 loss=", m)]
    # FAST: 12 steps, logging every 2 (plus the first step).
    assert len(progress) >= 6, messages[-20:]
    assert progress[-1].startswith("step 12/12 loss=")


# --- the web UI in Chromium -----------------------------------------------------------------


def ensure_chromium() -> str:
    """Debian's Chromium, installed with apt if missing; skip (saying why) only if impossible."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        reason = f"{CHROMIUM} missing and cannot apt-get install it (not root or no apt)"
        print(reason)
        pytest.skip(reason)
    proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=300)
        proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                              capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not Path(CHROMIUM).exists():
        reason = f"apt-get install chromium failed: {proc.stderr[-500:]}"
        print(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = ensure_chromium()
    from playwright.sync_api import sync_playwright

    # The UI may take a while to render on a busy machine; 5 s (Playwright's default) is not enough.
    expect.set_options(timeout=30_000)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def open_page(page: Any, dev: DagsterDev, path: str) -> None:
    """Navigate; what the page shows is then read only through `expect`, which waits for it."""
    page.goto(dev.url + path)


@pytest.mark.browser
def test_lineage_page_shows_all_assets_in_their_groups(
    page: Any, dagster_dev: DagsterDev, whole_graph_run: str, artifacts_dir: Path  # noqa: F811
) -> None:
    # The global lineage collapses groups by default; `expanded` opens them (what Alt+E does).
    expanded = ",".join(f"global@global:{group}" for group in GROUPS)
    page.set_viewport_size({"width": 3600, "height": 1600})  # wide enough for ten full, named nodes
    open_page(page, dagster_dev, f"/asset-groups?expanded={expanded}")
    expect(page).to_have_title("Global asset lineage")
    graph = page.locator("svg").filter(has=page.locator("foreignObject")).first
    for name in ASSETS:
        expect(graph.get_by_text(name, exact=True).first).to_be_visible()
    for group in GROUPS:  # group boxes in the graph, not only the sidebar tree
        expect(graph.get_by_text(group, exact=True).first).to_be_visible()
    expect(page.get_by_text("Loading…")).to_have_count(0)
    page.screenshot(path=str(artifacts_dir / "ui_lineage.png"))


@pytest.mark.browser
def test_evaluation_report_page_shows_metrics_and_checks(
    page: Any, dagster_dev: DagsterDev, whole_graph_run: str, artifacts_dir: Path  # noqa: F811
) -> None:
    open_page(page, dagster_dev, "/assets/evaluation_report?partition=tiny")
    table = page.locator("table", has_text="perplexity")
    for metric in ("perplexity", "rouge_l", "bleu", "chrf", "bits_per_byte"):
        row = table.locator("tr", has=page.get_by_text(metric, exact=True)).first
        expect(row).to_contain_text(re.compile(r"\d"))  # a value, not an empty cell
    page.screenshot(path=str(artifacts_dir / "ui_evaluation_report.png"))

    open_page(page, dagster_dev, "/assets/evaluation_report?view=checks&partition=tiny")
    for check in EVAL_CHECKS:
        expect(page.get_by_text(check, exact=True).first).to_be_visible()
    body = page.locator("body")
    expect(body).to_contain_text("Perplexity on validation assistant tokens")  # the check's description
    expect(body).to_contain_text("threshold")  # the check result's metadata
    expect(body).to_contain_text("value")
    page.screenshot(path=str(artifacts_dir / "ui_evaluation_checks.png"))


@pytest.mark.browser
def test_model_checkpoint_page_shows_the_loss_curve(
    page: Any, dagster_dev: DagsterDev, whole_graph_run: str, artifacts_dir: Path  # noqa: F811
) -> None:
    open_page(page, dagster_dev, "/assets/model_checkpoint?partition=tiny")
    expect(page.get_by_text("val_loss_after", exact=True)).to_have_count(1)
    # Markdown metadata opens in a dialog; the plot is a PNG inlined as a data URI.
    page.locator("tr", has_text="loss_curve").get_by_text("[Show Markdown]").click()
    image = page.locator("img[src^='data:image/png']").first
    expect(image).to_be_visible()
    # A decoded picture, not a broken-image icon; decoding may finish after the tag is visible.
    page.wait_for_function("img => img.complete && img.naturalWidth > 100 && img.naturalHeight > 100",
                           arg=image.element_handle())
    page.screenshot(path=str(artifacts_dir / "ui_model_checkpoint_loss_curve.png"))


@pytest.mark.browser
def test_size_comparison_page_shows_the_table(
    page: Any, dagster_dev: DagsterDev, whole_graph_run: str, artifacts_dir: Path  # noqa: F811
) -> None:
    open_page(page, dagster_dev, "/assets/size_comparison")
    # The markdown table renders inline in the metadata row, a moment after the row itself.
    row = page.locator("tr", has=page.get_by_text("table", exact=True)).first
    for column in ("size", "parameters", "perplexity", "rouge_l"):
        expect(row).to_contain_text(column)
    expect(row.get_by_role("cell", name="tiny", exact=True)).to_be_visible()
    expect(page.locator("body")).to_contain_text("125M, 350M, 500M, 1B, 1.5B")  # missing_sizes
    page.screenshot(path=str(artifacts_dir / "ui_size_comparison.png"))


@pytest.mark.browser
def test_sample_set_page_shows_the_preview_and_partition_status(
    page: Any, dagster_dev: DagsterDev, whole_graph_run: str, artifacts_dir: Path  # noqa: F811
) -> None:
    open_page(page, dagster_dev, "/assets/sample_set?partition=tiny")
    row = page.locator("tr", has=page.get_by_text("preview", exact=True)).first
    # Long Markdown opens in a dialog, short Markdown renders inline: wait for one of the two
    # to appear before deciding which, so the choice is never made on a half-rendered row.
    show = row.get_by_text("[Show Markdown]")
    inline = row.get_by_text(re.compile(r"instruction \(T="))
    expect(show.or_(inline).first).to_be_visible()
    if show.count():  # read only once one of the two is on screen
        show.first.click()
        expect(page.get_by_role("dialog")).to_contain_text("instruction (T=")
    else:
        expect(row).to_contain_text("instruction (T=")  # the rendered Markdown preview of samples
    expect(page.locator("body")).to_contain_text("analysis")
    page.screenshot(path=str(artifacts_dir / "ui_sample_set_preview.png"))

    # Partition status per size: one of six sizes materialized.
    open_page(page, dagster_dev, "/assets/model_checkpoint?view=partitions")
    body = page.locator("body")
    for size in ("tiny", "125M", "1.5B"):
        expect(body).to_contain_text(size)
    expect(body).to_contain_text("Materialized (1)")
    expect(body).to_contain_text("Missing (8)")
    page.screenshot(path=str(artifacts_dir / "ui_model_checkpoint_partitions.png"))


@pytest.mark.browser
def test_check_pages_show_the_tiny_partitions_results(
    page: Any, dagster_dev: DagsterDev, whole_graph_run: str, artifacts_dir: Path  # noqa: F811
) -> None:
    body = page.locator("body")
    for asset, names in PARTITIONED_CHECKS.items():
        for name in names:
            [execution] = check_executions(dagster_dev, asset, name, partition="tiny")
            outcome = "Passed" if execution["status"] == "SUCCEEDED" else "Failed"
            open_page(page, dagster_dev, f"/assets/{asset}?view=checks&checkDetail={name}")
            page.locator("button[role=tab]", has_text="Partitions").click()  # the check's tab, not the asset's
            # The check's own partitions: a result for one size of nine.
            expect(body).to_contain_text(f"{outcome} (1)")
            expect(body).to_contain_text("Missing (8)")
            expect(body).to_contain_text("Execution Failed (0)")
            page.get_by_text("tiny", exact=True).first.click()
            expect(body).to_contain_text(whole_graph_run[:8])  # the run that evaluated it, shortened
            expect(body).to_contain_text("View all historical executions (1)")
            for entry in execution["evaluation"]["metadataEntries"]:
                expect(page.locator("tr", has=page.get_by_text(entry["label"], exact=True)).first).to_be_visible()
            page.screenshot(path=str(artifacts_dir / f"ui_{asset}_{name}_tiny.png"))
