"""The concat joins only chunks of the render's current plan, made with the same encoder settings.

A re-planned render (its composition or props changed) must never publish a video built from the
previous version's chunk files; and chunks from workers whose FFmpeg encodes differently cannot be
joined by stream copy, so the concat refuses them and names both workers.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import dagster as dg
import pytest

from helios_pipeline.dagster_defs.assets import CHUNK_ASSET, DATA_VERSION_TAG, chunk_video, concat_video, mixed_video
from helios_pipeline.dagster_defs.registry import register_spec_file
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.engine.chunk_compat import probe_chunk
from helios_pipeline.engine.tools import ffmpeg_path
from helios_pipeline.storage.store import file_info
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.helpers import (
    CHUNK_KEYS,
    MAX_CHUNKS,
    chunk_key,
    latest_record,
    register,
    render_plan,
    run,
    write_spec,
)


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def rendered_chunks(tmp_path: Path, instance: dg.DagsterInstance, storage: RenderStorage, **fields: object) -> str:
    spec_file = write_spec(tmp_path / "specs", "guarded", COMPOSITIONS / "frame_raf", frame_count=20, **fields)
    key = register(instance, storage, spec_file)
    run(instance, storage, [render_plan], key)
    for chunk in CHUNK_KEYS[:2]:
        run(instance, storage, [chunk_video], chunk_key(key, chunk))
    return key


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    failure = next(event for event in result.all_events if event.is_step_failure)
    return failure.step_failure_data.error.message


@pytest.mark.slow
def test_chunks_of_a_previous_plan_are_never_joined(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    storage = RenderStorage(location=str(tmp_path / "storage"))
    key = rendered_chunks(tmp_path, instance, storage, concurrency=2, input_props={"version": 1})
    # the render is planned again with other props: its chunk files on disk are now the old version's
    changed = write_spec(tmp_path / "specs", "guarded", COMPOSITIONS / "frame_raf", frame_count=20, concurrency=2,
                         input_props={"version": 2})  # fmt: skip
    register_spec_file(storage, changed, MAX_CHUNKS)
    run(instance, storage, [render_plan], key)

    result = run(instance, storage, [concat_video, mixed_video], key, raise_on_error=False)

    assert not result.success
    message = failure_message(result)
    assert "chunk 000: rendered for another version of the render" in message
    assert "chunk 001: rendered for another version" in message
    assert latest_record(instance, mixed_video.key, key) is None, "no final video from stale chunks"
    assert not storage.load_spec(key).output_path.exists()


@pytest.mark.slow
def test_chunks_encoded_differently_are_refused_naming_both_workers(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    storage = RenderStorage(location=str(tmp_path / "storage"))
    key = rendered_chunks(tmp_path, instance, storage, concurrency=2)
    # chunk 001 as another worker's FFmpeg would have made it: same frames, another H.264 profile
    plan = storage.plan_for(key)
    chunk_file = Path(plan.chunks[1].output_file)
    other = chunk_file.with_name("other.mov")
    subprocess.run(
        [ffmpeg_path(), "-v", "error", "-i", str(chunk_file), "-c:v", "libx264", "-profile:v", "baseline",
         "-g", "10", "-bf", "0", "-video_track_timescale", "15360", str(other)],
        check=True,
    )  # fmt: skip
    other.replace(chunk_file)
    record = latest_record(instance, CHUNK_ASSET, str(chunk_key(key, "001")))
    assert record is not None and record.asset_materialization is not None
    info = file_info(chunk_file)
    metadata = dict(record.asset_materialization.metadata)
    metadata.update(
        worker_id="worker-b",
        bytes=info.size,
        sha256=info.sha256,
        encoder_settings=dg.MetadataValue.json(probe_chunk(chunk_file).encoder_settings),
    )
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=CHUNK_ASSET,
            partition=str(chunk_key(key, "001")),
            metadata=metadata,
            tags={DATA_VERSION_TAG: record.asset_materialization.tags[DATA_VERSION_TAG]},
        )
    )

    result = run(instance, storage, [concat_video, mixed_video], key, raise_on_error=False)

    assert not result.success
    message = failure_message(result)
    assert "cannot join chunk 0 (worker" in message and "chunk 1 (worker worker-b on" in message
    assert "video.profile" in message
    assert latest_record(instance, concat_video.key, key) is None
