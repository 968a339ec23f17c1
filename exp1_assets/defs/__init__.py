"""The Dagster layer: partitions, resources, assets, checks, schedules."""

import warnings

from dagster import PreviewWarning

# The checks of the size-partitioned assets are partitioned too (`AssetCheckSpec(partitions_def=...)`,
# preview in Dagster 1.13), so each size keeps its own results. That is a deliberate choice; without
# this filter every import (each CLI call, each code-server reload) repeats the same notice.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec",
                        category=PreviewWarning)
