"""The Dagster assets on a real (sqlite) instance, with real Chromium and FFmpeg.

A render is registered the way the sensor and the CLI register it (spec snapshot + a `renders`
partition) and then materialised partition by partition with ``dg.materialize``; everything the
UI would show (materialisations, metadata, check evaluations, step events, data versions) is
read back from the instance.
"""

from __future__ import annotations

import functools
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest

from helios_pipeline.dagster_defs.assets import (
    CHUNKS_COMPLETE,
    chunk_video,
    concat_video,
    mixed_video,
    render_plan,
)
from helios_pipeline.dagster_defs.names import CHUNK_POOL
from helios_pipeline.dagster_defs.registry import register_spec_file
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.fingerprint import picture_fingerprint, render_fingerprint
from helios_pipeline.spec import SpecError
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import frame_indices
from helios_pipeline_tests.helpers import (
    CHUNK_KEYS,
    MAX_CHUNKS,
    SMALL,
    chunk_key,
    expected_dom_capture,
    latest_metadata,
    latest_record,
    register,
    run,
    write_spec,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

needs_three_chunks = pytest.mark.skipif(
    MAX_CHUNKS < 3, reason=f"needs a chunk dimension of at least 3 (HELIOS_MAX_CHUNKS={MAX_CHUNKS})"
)


def plan_data_version(instance: dg.DagsterInstance, render_key: str) -> str:
    record = latest_record(instance, render_plan.key, render_key)
    assert record is not None and record.asset_materialization is not None
    return record.asset_materialization.tags["dagster/data_version"]


def event_types(result: dg.ExecuteInProcessResult) -> list[dg.DagsterEventType]:
    return [event.event_type for event in result.all_events]


def assert_fields(metadata: dict[str, dg.MetadataValue], kinds: dict[str, type]) -> None:
    for name, kind in kinds.items():
        assert name in metadata, f"metadata lacks {name!r}: {sorted(metadata)}"
        assert isinstance(metadata[name], kind), f"{name} is {type(metadata[name]).__name__}, not {kind.__name__}"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def storage(tmp_path: Path) -> RenderStorage:
    return RenderStorage(location=str(tmp_path / "storage"))


# --- one render, materialised partition by partition ------------------------------------------


@dataclass
class Rendered:
    instance: dg.DagsterInstance
    storage: RenderStorage
    key: str
    frames: int
    final_run: dg.ExecuteInProcessResult


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rendered]:
    """frame_raf, 30 frames in 2 real chunks; the other chunk partitions materialise as skipped."""
    if MAX_CHUNKS < 3:
        pytest.skip(f"needs a chunk dimension of at least 3 (HELIOS_MAX_CHUNKS={MAX_CHUNKS})")
    folder = tmp_path_factory.mktemp("rendered")
    storage = RenderStorage(location=str(folder / "storage"), keep_days="forever")  # the tests read the chunks
    spec_file = write_spec(folder / "specs", "raf-exact", COMPOSITIONS / "frame_raf", frame_count=30, concurrency=2)
    with dg.instance_for_test() as instance:
        key = register(instance, storage, spec_file)
        run(instance, storage, [render_plan], key)
        for chunk in CHUNK_KEYS:
            run(instance, storage, [chunk_video], chunk_key(key, chunk))
        final_run = run(instance, storage, [concat_video, mixed_video], key)
        yield Rendered(instance, storage, key, 30, final_run)


@pytest.mark.slow
def test_partition_by_partition_render_is_frame_exact(rendered: Rendered) -> None:
    final = Path(latest_metadata(rendered.instance, mixed_video.key, rendered.key)["path"].value)
    assert final == rendered.storage.plan_for(rendered.key).final_output_file
    assert final.name == f"{rendered.key}.mp4"
    assert frame_indices(final) == list(range(rendered.frames))


@pytest.mark.slow
def test_chunk_metadata_read_back_has_every_field(rendered: Rendered) -> None:
    plan = rendered.storage.plan_for(rendered.key)
    assert len(plan.chunks) == 2
    for chunk in plan.chunks:
        metadata = latest_metadata(rendered.instance, chunk_video.key, chunk_key(rendered.key, f"{chunk.id:03d}"))
        assert_fields(
            metadata,
            {
                "frames": dg.IntMetadataValue,
                "first_frame": dg.IntMetadataValue,
                "last_frame": dg.IntMetadataValue,
                "wall_seconds": dg.FloatMetadataValue,
                "capture_fps": dg.FloatMetadataValue,
                "browser_startup_seconds": dg.FloatMetadataValue,
                "encode_seconds": dg.FloatMetadataValue,
                "bytes": dg.IntMetadataValue,
                "worker_host": dg.TextMetadataValue,
                "worker_pid": dg.IntMetadataValue,
            },
        )
        assert metadata["frames"].value == chunk.frame_count == 15
        assert metadata["first_frame"].value == chunk.start_frame
        assert metadata["last_frame"].value == chunk.end_frame - 1
        assert metadata["bytes"].value == Path(chunk.output_file).stat().st_size > 0
        assert metadata["wall_seconds"].value > metadata["browser_startup_seconds"].value > 0
        assert metadata["capture_fps"].value > 0
        assert metadata["encode_seconds"].value >= 0
        assert metadata["worker_host"].value == socket.gethostname()
        assert metadata["worker_pid"].value > 0
        # the DOM capture the engine's probe chose for this browser (BeginFrame on chromium-headless-shell)
        assert metadata["capture_method"].value == f"dom/{expected_dom_capture()}/jpeg"
        thumbnail = metadata["preview"].value  # the first frame, small enough for the UI to show it inline
        assert thumbnail.startswith(f"![chunk_{chunk.id:04d}.mov](data:image/jpeg;base64,") and len(thumbnail) < 1000


@pytest.mark.slow
def test_chunks_beyond_the_plan_materialise_as_skipped(rendered: Rendered) -> None:
    """A spec asking for fewer chunks than the dimension runs through: the rest are empty partitions."""
    for chunk in CHUNK_KEYS[2:]:
        metadata = latest_metadata(rendered.instance, chunk_video.key, chunk_key(rendered.key, chunk))
        assert metadata["skipped"].value is True
        assert metadata["frames"].value == 0
        assert metadata["preview"].value == "**unused** — the plan of this render has 2 chunks"
    materialized = rendered.instance.get_materialized_partitions(chunk_video.key)
    assert {chunk_key(rendered.key, chunk) for chunk in CHUNK_KEYS} <= materialized
    assert latest_record(rendered.instance, concat_video.key, rendered.key) is not None


@pytest.mark.slow
def test_concat_and_mixed_metadata_read_back(rendered: Rendered) -> None:
    duration = rendered.frames / SMALL["fps"]
    kinds = {
        "seconds": dg.FloatMetadataValue,
        "bytes": dg.IntMetadataValue,
        "duration_seconds": dg.FloatMetadataValue,
        "video_codec": dg.TextMetadataValue,
        "path": dg.PathMetadataValue,
    }
    for key in (concat_video.key, mixed_video.key):
        metadata = latest_metadata(rendered.instance, key, rendered.key)
        assert_fields(metadata, kinds)
        path = Path(metadata["path"].value)
        assert path.is_file()
        assert metadata["bytes"].value == path.stat().st_size
        assert metadata["seconds"].value > 0
        assert abs(metadata["duration_seconds"].value - duration) < 0.5 / SMALL["fps"]
        assert metadata["video_codec"].value == "h264"
    mixed = latest_metadata(rendered.instance, mixed_video.key, rendered.key)
    assert_fields(mixed, {"audio_codec": dg.TextMetadataValue, "contact_sheet": dg.PathMetadataValue})
    sheet = Path(mixed["contact_sheet"].value)
    assert sheet.is_file() and sheet.read_bytes()[:8] == PNG_MAGIC
    preview = mixed["preview"].value  # the sheet itself, embedded: the browser cannot load a server path
    assert preview.startswith(f"![{sheet.name}](data:image/jpeg;base64,") and len(preview) <= 150_000


@pytest.mark.slow
def test_check_results_passed(rendered: Rendered) -> None:
    evaluations = rendered.instance.all_logs(
        rendered.final_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    )
    results = {
        event.dagster_event.event_specific_data.check_name: event.dagster_event.event_specific_data.passed
        for event in evaluations
    }
    assert results == {CHUNKS_COMPLETE: True, "final_video_valid": True}


# --- chunk counts -------------------------------------------------------------------------------


def test_more_chunks_than_the_deployment_allows_is_a_spec_error(tmp_path: Path, storage: RenderStorage) -> None:
    spec_file = write_spec(tmp_path, "too-many", COMPOSITIONS / "frame_raf", frame_count=30, concurrency=MAX_CHUNKS + 1)
    with pytest.raises(SpecError) as caught:
        register_spec_file(storage, spec_file, MAX_CHUNKS)
    message = str(caught.value)
    assert "concurrency" in message and "HELIOS_MAX_CHUNKS" in message and str(spec_file) in message
    assert not storage.has_spec("too-many"), "a rejected spec must not be registered"


@pytest.mark.parametrize(
    ("pool", "max_chunks", "expected"),
    [
        ({"default_limit": 2}, 4, 2),  # the repo's dagster.yaml: 4 chunks would render in two waves of two
        ({"default_limit": 2}, 1, 1),  # never more than the chunk dimension
        ({"default_limit": 2, "set": 3}, 4, 3),  # `dagster instance concurrency set helios_chunks 3`
        ({}, 4, 4),  # a pool without a limit: the whole dimension
    ],
)
def test_a_spec_without_a_chunk_count_gets_as_many_as_the_deployment_renders_at_once(
    tmp_path: Path, storage: RenderStorage, pool: dict, max_chunks: int, expected: int
) -> None:
    """More chunks than the ``helios_chunks`` pool's slots only wait for one, each paying a run's and a
    browser's start; a spec that names its ``concurrency`` keeps it."""
    overrides = {"concurrency": {"pools": {"default_limit": pool["default_limit"]}}} if pool else {}
    with dg.instance_for_test(overrides=overrides) as instance:
        if "set" in pool:
            instance.event_log_storage.set_concurrency_slots(CHUNK_POOL, pool["set"])
        default = write_spec(tmp_path, "default-count", COMPOSITIONS / "frame_raf", frame_count=30)
        _, spec = register_spec_file(storage, default, max_chunks, instance=instance)
        assert spec.concurrency == expected
        assert len(storage.plan_for("default-count").chunks) == expected
        asked = write_spec(tmp_path, "asked", COMPOSITIONS / "frame_raf", frame_count=30, concurrency=1)
        assert register_spec_file(storage, asked, max_chunks, instance=instance)[1].concurrency == 1
    assert register_spec_file(storage, default, max_chunks)[1].concurrency == max_chunks  # no instance to ask


def test_frames_per_chunk_beyond_the_chunk_dimension_names_the_field(tmp_path: Path, storage: RenderStorage) -> None:
    frames = 10 * (MAX_CHUNKS + 1)
    spec_file = write_spec(tmp_path, "fpc", COMPOSITIONS / "frame_raf", frame_count=frames, frames_per_chunk=10)
    with pytest.raises(SpecError) as caught:
        register_spec_file(storage, spec_file, MAX_CHUNKS)
    assert f"frames_per_chunk: {MAX_CHUNKS + 1} chunks exceed" in str(caught.value)
    assert not storage.has_spec("fpc")


@needs_three_chunks
def test_frames_per_chunk_sets_the_chunks_of_a_render(
    tmp_path: Path, instance: dg.DagsterInstance, storage: RenderStorage
) -> None:
    spec_file = write_spec(tmp_path, "fpc", COMPOSITIONS / "frame_raf", frame_count=20, frames_per_chunk=7)
    key = register(instance, storage, spec_file)
    run(instance, storage, [render_plan], key)
    assert [chunk.frame_count for chunk in storage.plan_for(key).chunks] == [7, 7, 6]
    assert latest_metadata(instance, render_plan.key, key)["chunks"].value == 3


@needs_three_chunks
def test_fewer_frames_than_chunks_plans_and_skips_the_rest(
    tmp_path: Path, instance: dg.DagsterInstance, storage: RenderStorage
) -> None:
    """No concurrency in the spec: it gets the deployment's chunk count, but 2 frames make 2 chunks."""
    key = register(instance, storage, write_spec(tmp_path, "two-frames", COMPOSITIONS / "frame_raf", frame_count=2))
    run(instance, storage, [render_plan], key)
    assert latest_metadata(instance, render_plan.key, key)["chunks"].value == 2
    run(instance, storage, [chunk_video], chunk_key(key, CHUNK_KEYS[2]))  # no browser needed for a skipped chunk
    metadata = latest_metadata(instance, chunk_video.key, chunk_key(key, CHUNK_KEYS[2]))
    assert metadata["skipped"].value is True and metadata["frames"].value == 0


# --- the blocking check ---------------------------------------------------------------------------


@pytest.mark.slow
def test_concat_with_a_missing_chunk_fails_its_blocking_check(
    tmp_path: Path, instance: dg.DagsterInstance, storage: RenderStorage
) -> None:
    spec_file = write_spec(tmp_path, "gap", COMPOSITIONS / "frame_raf", frame_count=20, concurrency=2)
    key = register(instance, storage, spec_file)
    run(instance, storage, [render_plan], key)
    run(instance, storage, [chunk_video], chunk_key(key, "000"))  # chunk 001 is never rendered
    plan = storage.plan_for(key)
    assert Path(plan.chunks[0].output_file).is_file() and not Path(plan.chunks[1].output_file).exists()

    result = run(instance, storage, [concat_video, mixed_video], key, raise_on_error=False)

    assert not result.success
    failed_steps = {event.step_key for event in result.all_events if event.is_step_failure}
    assert failed_steps == {"concat_video"}
    evaluations = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    assert len(evaluations) == 1
    evaluation = evaluations[0].dagster_event.event_specific_data
    assert evaluation.check_name == CHUNKS_COMPLETE and evaluation.passed is False
    assert evaluation.metadata["missing_chunks"].value == "001"
    assert latest_record(instance, concat_video.key, key) is None
    assert latest_record(instance, mixed_video.key, key) is None
    assert not plan.concat_output_file.exists()
    assert not plan.final_output_file.exists(), "no final video may be built from a short concat"


# --- retries and permanent failures ------------------------------------------------------------


class _FlakyHandler(SimpleHTTPRequestHandler):
    """Serves a folder, but answers 500 to the first request for index.html."""

    statuses: list[int]
    lock = threading.Lock()

    def do_GET(self) -> None:
        if self.path.split("?")[0].endswith("/index.html"):
            with self.lock:
                first = not self.statuses
                self.statuses.append(500 if first else 200)
            if first:
                self.send_error(500, "flaky on purpose")
                return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def flaky_server() -> Iterator[tuple[str, list[int]]]:
    statuses: list[int] = []
    handler = type("Handler", (_FlakyHandler,), {"statuses": statuses})
    serve_folder = functools.partial(handler, directory=str(COMPOSITIONS / "frame_raf"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), serve_folder)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html", statuses
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.slow
def test_a_chunk_that_fails_once_is_materialised_by_its_retry(
    tmp_path: Path, instance: dg.DagsterInstance, storage: RenderStorage, flaky_server: tuple[str, list[int]]
) -> None:
    url, statuses = flaky_server
    key = register(instance, storage, write_spec(tmp_path, "flaky", url, frame_count=10, concurrency=1))
    run(instance, storage, [render_plan], key)

    result = run(instance, storage, [chunk_video], chunk_key(key, "000"))

    assert result.success
    assert statuses[:2] == [500, 200]
    types = event_types(result)
    retried = [t for t in types if t in (dg.DagsterEventType.STEP_UP_FOR_RETRY, dg.DagsterEventType.STEP_RESTARTED)]
    assert retried, f"no retry in {types}"
    assert types.index(retried[0]) < types.index(dg.DagsterEventType.STEP_SUCCESS)
    assert dg.DagsterEventType.STEP_FAILURE not in types
    metadata = latest_metadata(instance, chunk_video.key, chunk_key(key, "000"))
    assert metadata["frames"].value == 10
    assert frame_indices(Path(metadata["path"].value)) == list(range(10))


@pytest.mark.slow
def test_a_page_that_throws_fails_its_chunk_without_retry(
    tmp_path: Path, instance: dg.DagsterInstance, storage: RenderStorage
) -> None:
    spec_file = write_spec(tmp_path, "throws", COMPOSITIONS / "throws_late", frame_count=40, concurrency=2)
    key = register(instance, storage, spec_file)
    run(instance, storage, [render_plan], key)

    result = run(instance, storage, [chunk_video], chunk_key(key, "001"), raise_on_error=False)  # frames 20..39

    assert not result.success
    types = event_types(result)
    assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in types and dg.DagsterEventType.STEP_RESTARTED not in types
    failures = [event for event in result.all_events if event.is_step_failure]
    assert len(failures) == 1
    failure_data = failures[0].step_failure_data
    text = " ".join(filter(None, [failures[0].message, str(failure_data.error), str(failure_data.user_failure_data)]))
    assert "frame 20" in text and "boom at the twentieth frame" in text, text
    assert latest_record(instance, chunk_video.key, chunk_key(key, "001")) is None
    assert not Path(storage.plan_for(key).chunks[1].output_file).exists()


# --- data versions --------------------------------------------------------------------------------


def test_plan_data_version_is_the_picture_fingerprint(
    tmp_path: Path, instance: dg.DagsterInstance, storage: RenderStorage
) -> None:
    composition = tmp_path / "composition"
    shutil.copytree(COMPOSITIONS / "frame_raf", composition)
    spec_file = write_spec(tmp_path / "specs", "versioned", composition, frame_count=30, concurrency=2)
    key = register(instance, storage, spec_file)

    run(instance, storage, [render_plan], key)
    first = plan_data_version(instance, key)
    assert first == picture_fingerprint(storage.load_spec(key))
    assert latest_metadata(instance, render_plan.key, key)["picture_fingerprint"].value == first
    assert latest_metadata(instance, render_plan.key, key)["fingerprint"].value == render_fingerprint(
        storage.load_spec(key)
    )

    register(instance, storage, spec_file)
    run(instance, storage, [render_plan], key)  # an unchanged re-plan
    assert plan_data_version(instance, key) == first

    page = composition / "index.html"
    page.write_text(page.read_text(encoding="utf-8").replace("#000", "#010101"), encoding="utf-8")
    register(instance, storage, spec_file)
    run(instance, storage, [render_plan], key)
    changed = plan_data_version(instance, key)
    assert changed != first
    assert changed == picture_fingerprint(storage.load_spec(key))


@needs_three_chunks
def test_planning_again_does_not_record_unused_chunks_again(
    tmp_path: Path, instance: dg.DagsterInstance, storage: RenderStorage
) -> None:
    """A re-planned render's unused chunks must not look updated: automation would start the concat early."""
    spec_file = write_spec(tmp_path, "again", COMPOSITIONS / "frame_raf", frame_count=10, concurrency=2)
    key = register(instance, storage, spec_file)
    run(instance, storage, [render_plan], key)
    unused = str(chunk_key(key, CHUNK_KEYS[2]))

    def records() -> list[dg.EventLogRecord]:
        return instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=chunk_video.key, asset_partitions=[unused]), limit=10
        ).records

    assert len(records()) == 1 and records()[0].asset_materialization.metadata["skipped"].value is True
    write_spec(tmp_path, "again", COMPOSITIONS / "frame_raf", frame_count=10, concurrency=2, input_props={"v": 2})
    register(instance, storage, spec_file)
    run(instance, storage, [render_plan], key)
    assert len(records()) == 1, "the unused partition was recorded again"
