"""Scheduled reruns and the jobs the UI lists.

- `experiment_job`: the whole graph (one run per size partition).
- `data_job`: the data half alone (unpartitioned assets).
- `weekly_experiment`: re-materializes every size, one run per partition, on a cron that
  `EXP1_SCHEDULE_CRON` can change (read in `exp1_assets.settings`; default: Mondays 03:00). Off
  until turned on in the UI or with `dagster schedule start weekly_experiment`.
"""

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleEvaluationContext,
    define_asset_job,
    schedule,
)

from exp1_assets.defs.partitions import size_partitions
from exp1_assets.settings import Settings

experiment_job = define_asset_job(
    name="experiment_job",
    selection=AssetSelection.groups("training", "evaluation"),
    description="Train, evaluate and sample one model size (the data assets must exist).",
)

data_job = define_asset_job(
    name="data_job",
    selection=AssetSelection.groups("data"),
    description="Raw conversations -> splits -> tokenizer -> packed blocks.",
)


@schedule(
    cron_schedule=Settings.from_environ().schedule_cron,
    job=experiment_job,
    default_status=DefaultScheduleStatus.STOPPED,
    description="Re-materialize every model size: one run per partition.",
)
def weekly_experiment(context: ScheduleEvaluationContext):
    stamp = context.scheduled_execution_time.strftime("%Y%m%d-%H%M") if context.scheduled_execution_time else "now"
    for size in size_partitions.get_partition_keys():
        yield RunRequest(run_key=f"{size}-{stamp}", partition_key=size, tags={"exp1/size": size})


# Evaluation and samples follow a new checkpoint, the comparison follows any new report
# (`AutomationCondition.eager()` on those assets). The sensor that evaluates those conditions is
# off until turned on in the UI (Automation tab) or with `dagster sensor start exp1_automation`.
exp1_automation = AutomationConditionSensorDefinition(
    "exp1_automation",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=60,
    description="Evaluates the assets' automation conditions (eager: follow new upstream data).",
)
