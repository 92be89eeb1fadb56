"""What a (re-)submitted render still needs: the chunks and the concat not yet made for its pictures.

Chunks and concat follow the picture fingerprint (``fingerprint.PICTURE_FIELDS``). A render submitted
again after an edit of its sound alone (a track's volume, offset or file, the audio codec) keeps
its pictures, so its kept concat is re-mixed and no frame is rendered; one stopped halfway keeps
its finished chunks. Whatever changed the pictures renders everything again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from helios_pipeline.dagster_defs.names import CHUNK_ASSET, CONCAT_ASSET, DATA_VERSION_TAG, PLAN_ASSET
from helios_pipeline.dagster_defs.partitions import chunk_partition
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.plan import RenderChunk, RenderPlan


@dataclass(frozen=True)
class PendingWork:
    """What a render's backfill must make before its mix (which always runs)."""

    chunks: tuple[int, ...]
    concat: bool


def pending_work(
    instance: dg.DagsterInstance, storage: RenderStorage, render_key: str, plan: RenderPlan
) -> PendingWork:
    """The chunks and concat of ``plan`` that are not materialised for its pictures, or whose file is gone.

    Nothing is reused unless the render's last plan had the same pictures: a re-plan with other
    pictures makes automation render every chunk it was not given, so the backfill takes them all.
    """
    picture = storage.picture_fingerprint(render_key, plan.spec)
    everything = PendingWork(tuple(chunk.id for chunk in plan.chunks), concat=True)
    if _data_version(instance, PLAN_ASSET, render_key) != picture:
        return everything
    if _data_version(instance, CONCAT_ASSET, render_key) == picture and storage.has_file(
        render_key, plan.concat_output_file
    ):
        return PendingWork((), concat=False)
    missing = tuple(chunk.id for chunk in plan.chunks if not _chunk_done(instance, storage, render_key, chunk, picture))
    return PendingWork(missing, concat=True)


def _chunk_done(
    instance: dg.DagsterInstance, storage: RenderStorage, render_key: str, chunk: RenderChunk, picture: str
) -> bool:
    version = _data_version(instance, CHUNK_ASSET, str(chunk_partition(render_key, chunk.id)))
    expected = f"{picture}-{chunk.start_frame}-{chunk.frame_count}"
    return version == expected and storage.has_file(render_key, Path(chunk.output_file))


def _data_version(instance: dg.DagsterInstance, asset: dg.AssetKey, partition: str) -> str | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[partition]), limit=1
    ).records
    materialization = records[0].asset_materialization if records else None
    return (materialization.tags or {}).get(DATA_VERSION_TAG) if materialization is not None else None
