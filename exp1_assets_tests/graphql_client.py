"""The GraphQL that the suite sends to `dagster dev`: the UI's own queries, and small helpers.

The "Materialize" button's mutation, run status and logs, materializations, checks and their
executions per partition. Used by the browser module and the load test.
"""

from __future__ import annotations

import time
from typing import Any

from exp1_assets_tests.dagster_dev import LOCATION, REPOSITORY, DagsterDev

# Every asset of the graph by group, in lineage order (what the UI's "Materialize all" selects).
GROUPS = {
    "data": ["raw_conversations", "conversation_splits", "tokenizer", "packed_dataset"],
    "training": ["model_checkpoint"],
    "evaluation": ["evaluation_report", "sample_set", "benchmark_report"],
    "reporting": ["report_card", "size_comparison"],
}
ASSETS = [name for names in GROUPS.values() for name in names]

# The UI's "Materialize" button: the implicit asset job, an asset selection, a partition tag.
LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) { __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message } } }
"""
RUN_STATUS = """
query Run($runId: ID!) { runOrError(runId: $runId) { __typename
    ... on Run { status stepStats { stepKey status startTime endTime } } ... on Error { message } } }
"""
RUN_LOGS = """
query Logs($runId: ID!, $cursor: String) { logsForRun(runId: $runId, afterCursor: $cursor, limit: 1000) {
  __typename ... on EventConnection { cursor hasMore events { __typename ... on MessageEvent { message stepKey } } }
  ... on Error { message } } }
"""
MATERIALIZATIONS = """
query Mats($path: [String!]!, $partitions: [String!]) { assetOrError(assetKey: {path: $path}) { __typename
  ... on Asset { assetMaterializations(partitions: $partitions, limit: 1) { partition runId
      metadataEntries { __typename label
        ... on FloatMetadataEntry { floatValue } ... on IntMetadataEntry { intValue }
        ... on MarkdownMetadataEntry { mdStr } ... on PathMetadataEntry { path } } } } } }
"""
CHECKS = """
query Checks($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) { __typename
  ... on AssetNode { assetChecksOrError { __typename ... on AssetChecks { checks { name
      executionForLatestMaterialization { status runId evaluation { success severity
          metadataEntries { label ... on FloatMetadataEntry { floatValue } ... on BoolMetadataEntry { boolValue }
          } } } } } } } } }
"""
CHECK_EXECUTIONS = """
query Executions($path: [String!]!, $check: String!, $partition: String) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $check, partition: $partition, limit: 10) {
    runId status partition evaluation { partition success metadataEntries { label } } } }
"""
CHECK_PARTITIONS = """
query CheckPartitions($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) { __typename
  ... on AssetNode { assetChecksOrError { __typename ... on AssetChecks { checks { name
      partitionStatuses { __typename ... on AssetCheckDefaultPartitionStatuses {
          succeededPartitions failedPartitions inProgressPartitions skippedPartitions executionFailedPartitions } }
  } } } } } }
"""


def launch_whole_graph(dev: DagsterDev, *, partition: str, run_config: dict[str, Any]) -> str:
    return launch_run(dev, assets=ASSETS, partition=partition, run_config=run_config)


def launch_run(dev: DagsterDev, *, assets: list[str], partition: str, run_config: dict[str, Any]) -> str:
    """What the UI's "Materialize" button sends for `assets` of one partition; the new run's id."""
    params = {
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "jobName": "__ASSET_JOB",
                     "assetSelection": [{"path": [name]} for name in assets]},
        "runConfigData": run_config,
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
    }
    result = dev.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def wait_for_run(dev: DagsterDev, run_id: str, *, timeout_s: float) -> dict[str, Any]:
    """Poll until the run ends (the daemon dequeues it; the run worker runs every step)."""
    deadline = time.time() + timeout_s
    run: dict[str, Any] = {}
    while time.time() < deadline:
        run = dev.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]
        if run.get("status") in ("SUCCESS", "FAILURE", "CANCELED"):
            return run
        time.sleep(2)
    raise TimeoutError(f"run {run_id} not finished after {timeout_s:.0f} s: {run}\n{dev.log_tail()}")


def run_messages(dev: DagsterDev, run_id: str) -> list[dict[str, Any]]:
    events, cursor = [], None
    while True:
        page = dev.graphql(RUN_LOGS, {"runId": run_id, "cursor": cursor})["logsForRun"]
        assert page["__typename"] == "EventConnection", page
        events += [e for e in page["events"] if e.get("message")]
        cursor = page["cursor"]
        if not page["hasMore"]:
            return events


def check_executions(dev: DagsterDev, asset: str, check: str, *, partition: str) -> list[dict[str, Any]]:
    """Executions of one check for one partition ("" = those recorded without a partition)."""
    variables = {"path": [asset], "check": check, "partition": partition}
    return dev.graphql(CHECK_EXECUTIONS, variables)["assetCheckExecutions"]
