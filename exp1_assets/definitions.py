"""The one place where assets, checks, schedules and resources are bound.

`dagster dev` (via workspace.yaml / pyproject) and `dagster asset materialize -m
exp1_assets.definitions` both load `defs` from here.
"""

from dagster import Definitions

from exp1_assets.defs.benchmark_assets import benchmark_report
from exp1_assets.defs.data_assets import conversation_splits, packed_dataset, raw_conversations, tokenizer
from exp1_assets.defs.evaluation_assets import evaluation_report, sample_set
from exp1_assets.defs.launcher import JobLauncher
from exp1_assets.defs.report_card_assets import report_card
from exp1_assets.defs.reporting_assets import size_comparison
from exp1_assets.defs.schedules import data_job, experiment_job, exp1_automation, weekly_experiment
from exp1_assets.defs.store import ArtifactStore
from exp1_assets.defs.training_assets import model_checkpoint

defs = Definitions(
    assets=[raw_conversations, conversation_splits, tokenizer, packed_dataset,
            model_checkpoint, evaluation_report, sample_set, benchmark_report, size_comparison, report_card],
    jobs=[experiment_job, data_job],
    schedules=[weekly_experiment],
    sensors=[exp1_automation],
    resources={"store": ArtifactStore(), "launcher": JobLauncher()},
)
