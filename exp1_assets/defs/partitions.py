"""One partition per model size, straight from the size registry."""

from dagster import StaticPartitionsDefinition

from exp1_assets.sizes import SIZES

size_partitions = StaticPartitionsDefinition(list(SIZES))
