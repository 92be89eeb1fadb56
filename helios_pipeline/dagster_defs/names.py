"""Names shared by the definitions, the CLI and the tests: partitions, asset keys, tags, pool.

Defined once so that a rename cannot leave a sensor, a backfill or a query looking for the old name.
"""

from __future__ import annotations

import dagster as dg

GROUP = "helios"
RENDERS = "renders"
"""The dynamic partitions definition's name: one partition per registered render."""
CHUNK_POOL = "helios_chunks"
"""The concurrency pool of chunk steps: Chromium renders at once, across the deployment."""
RENDER_TAG = "helios/render"
"""Run and backfill tag naming the render key."""
WORKER_TAG = "helios/worker"
"""Run tag a chunk run adds when it starts: the worker rendering it (shown by ``status`` before it is done)."""
PLAN_JOB = "plan_render"
"""The job that plans a render registered by a schedule (its runs are a render's plan runs)."""
BACKFILL_PLAN_TAG = "helios/plan_for_backfill"
"""Tag of a plan run made for a backfill (the CLI's): automation leaves what follows the plan to that backfill."""

PLAN_ASSET = dg.AssetKey("render_plan")
CHUNK_ASSET = dg.AssetKey("chunk_video")
CONCAT_ASSET = dg.AssetKey("concat_video")
MIXED_ASSET = dg.AssetKey("mixed_video")
BACKFILL_ASSETS = (PLAN_ASSET, CHUNK_ASSET, CONCAT_ASSET, MIXED_ASSET)
DATA_VERSION_TAG = "dagster/data_version"
PARTITION_TAG = "dagster/partition"
"""Dagster's tag of a run's partition: the render key on plan, concat and mix runs."""
RENDER_PARTITION_TAG = "dagster/partition/render"
"""The render dimension's tag on chunk runs (render x chunk partitions)."""
CHUNK_PARTITION_TAG = "dagster/partition/chunk"
