"""The render partitions: one dynamic partition per render, and render x chunk for the chunk asset.

The chunk dimension's size (``HELIOS_MAX_CHUNKS``) is fixed when the code location loads: a
partitions definition cannot change per run.
"""

from __future__ import annotations

import warnings

import dagster as dg

from helios_pipeline.dagster_defs.names import RENDERS
from helios_pipeline.dagster_defs.settings import Settings, chunk_keys

SETTINGS = Settings.from_env()

renders = dg.DynamicPartitionsDefinition(name=RENDERS)
chunk_partitions = dg.MultiPartitionsDefinition(
    {"render": renders, "chunk": dg.StaticPartitionsDefinition(chunk_keys(SETTINGS.max_chunks))}
)
with warnings.catch_warnings():  # beta, but the mapping the UI, backfills and automation all honour
    warnings.simplefilter("ignore", dg.BetaWarning)
    ALL_CHUNKS_OF_RENDER = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="render")


def chunk_partition(render_key: str, index: int) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"render": render_key, "chunk": f"{index:03d}"})
