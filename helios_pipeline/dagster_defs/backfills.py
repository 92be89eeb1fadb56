"""Backfills of one render: what the UI launches, created and followed from Python.

A render's backfill targets its chunks (only those its plan uses), the concat and the mixed video,
so it shows on the UI's *Backfills* page and can be re-executed from failure like one launched
there. The Dagster internals this needs are in ``private_api``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import dagster as dg

from helios_pipeline.dagster_defs import private_api
from helios_pipeline.dagster_defs.names import (
    BACKFILL_ASSETS,
    CHUNK_ASSET,
    CONCAT_ASSET,
    MIXED_ASSET,
    RENDER_TAG,
    RENDERS,
)

END_POLL_SECONDS = 0.1
"""How often ``wait_for_backfill_end`` looks: the CLI's own daemon is stopped as soon as the backfill is recorded
as ended, which its daemon does within a loop round (0.5 s) of the last run's end."""


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def _asset_graph(asset_graph: Any | None) -> Any:
    """The graph to resolve partitions against: the one given (a loaded workspace's), else this process's."""
    if asset_graph is not None:
        return asset_graph
    from helios_pipeline.dagster_defs.definitions import defs

    return defs.resolve_asset_graph()


def launch_backfill(
    instance: dg.DagsterInstance,
    render_key: str,
    asset_graph: Any | None = None,
    tags: dict[str, str] | None = None,
    with_plan: bool = True,
    chunk_count: int | None = None,
    chunks: Sequence[int] | None = None,
    with_concat: bool = True,
) -> str:
    """Submit an asset backfill of one registered render and return its id.

    The backfill targets the render's plan, every chunk partition of the render, the concat and
    the mixed video: what a user selects in the UI. The daemon then runs the plan, one run per
    chunk under the run queue, and concat + mix together once all chunks exist. ``with_plan=False``
    leaves the plan out (chunks read the registered spec, not the plan asset), which saves a run
    and a daemon loop before the chunks start; ``chunk_count`` then limits the backfill to the
    chunks the render's plan uses (the concat waits only for parents inside the backfill).
    ``chunks`` names the chunks instead (those not yet made for the render's pictures); with none,
    the backfill holds the concat and the mix, or the mix alone when ``with_concat`` is False (an
    edit of the sound alone re-mixes the concat that is there).

    ``asset_graph`` must be the deployment's (for example ``WorkspaceRequestContext.asset_graph``
    of a workspace loaded with the deployment's environment); by default it is this process's
    definitions, which is right when this process has the deployment's HELIOS_MAX_CHUNKS.
    """
    if not instance.has_dynamic_partition(RENDERS, render_key):
        raise ValueError(f"render {render_key!r} is not registered (no such `{RENDERS}` partition)")
    graph = _asset_graph(asset_graph)
    if with_plan:  # the plan partition is the backfill's root; everything below it follows
        assets, partitions = BACKFILL_ASSETS, [render_key]
    elif chunks is not None and not chunks:  # every chunk is there: the render's partition is the root
        assets, partitions = ((CONCAT_ASSET, MIXED_ASSET) if with_concat else (MIXED_ASSET,)), [render_key]
    else:  # the render's chunk partitions are the root
        chunk_dimension = graph.get(CHUNK_ASSET).partitions_def.get_partitions_def_for_dimension("chunk")
        chunk_keys = chunk_dimension.get_partition_keys()
        assets = BACKFILL_ASSETS[1:]
        partitions = [
            str(dg.MultiPartitionKey({"render": render_key, "chunk": chunk}))
            for chunk in (chunk_keys[:chunk_count] if chunks is None else [chunk_keys[index] for index in chunks])
        ]
    return private_api.add_asset_backfill(
        instance,
        graph,
        partitions,
        assets,
        tags={RENDER_TAG: render_key, **(tags or {})},
        title=f"render {render_key}",
    )


def reexecute_backfill_from_failure(
    instance: dg.DagsterInstance, backfill_id: str, asset_graph: Any | None = None
) -> str:
    """Re-execute a finished asset backfill from failure and return the new backfill's id.

    The UI's "Re-execute backfill → from failure" (GraphQL ``reexecutePartitionBackfill`` with
    ``FROM_FAILURE``): a new backfill of the target minus what the backfill materialised, so
    finished chunks are reused and only the failed ones (and what depends on them) run again.
    """
    backfill = instance.get_backfill(backfill_id)
    if backfill is None or not backfill.is_asset_backfill:
        raise ValueError(f"no asset backfill {backfill_id!r} in this instance")
    if not private_api.is_terminal(backfill):
        raise ValueError(f"backfill {backfill_id} is still {backfill.status.value}; re-execute it once it has ended")
    return private_api.add_backfill_of_remaining(instance, backfill, _asset_graph(asset_graph))


def render_backfill(instance: dg.DagsterInstance, key: str, since: float) -> Any | None:
    """The newest backfill of render ``key`` created after ``since`` (what ``submit`` launched)."""
    return private_api.newest_backfill(instance, {RENDER_TAG: key}, utc(since))


def render_in_progress(instance: dg.DagsterInstance, key: str) -> Any | None:
    """Render ``key``'s backfill when it is still going (requested, not ended nor being canceled), else None."""
    backfill = private_api.newest_backfill(instance, {RENDER_TAG: key}, None)
    return backfill if backfill is not None and backfill.status.value == "REQUESTED" else None


def cancel_backfill(instance: dg.DagsterInstance, backfill_id: str, daemon_alive: bool) -> None:
    """Stop a backfill from launching anything more: CANCELING for a live daemon, else CANCELED at once."""
    backfill = instance.get_backfill(backfill_id)
    if backfill is None or private_api.is_terminal(backfill):
        return
    private_api.stop_backfill(instance, backfill, daemon_alive)


def cancel_render_backfill(instance: dg.DagsterInstance, key: str, since: float, daemon_alive: bool) -> None:
    backfill = render_backfill(instance, key, since)
    if backfill is not None:
        cancel_backfill(instance, backfill.backfill_id, daemon_alive)


def wait_for_backfill_end(instance: dg.DagsterInstance, key: str, since: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        backfill = render_backfill(instance, key, since)
        if backfill is None or private_api.is_terminal(backfill):
            return
        time.sleep(END_POLL_SECONDS)
