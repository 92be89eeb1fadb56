"""What each render in the instance is doing, read from the instance alone (``helios-pipeline status``).

Everything comes from Dagster's public instance API (dynamic partitions, run records, materialisations,
run event logs), so it reads a sqlite or a Postgres instance alike while a UI, a daemon or a deployment
works on it. The storage is only asked for what the instance does not hold: the spec of a render that
was never planned, and the frames of a chunk still rendering (best effort, never an error).

A render's *attempt* starts with the run of its latest plan: runs that ended before it (an earlier
submission of the same render) neither count as its failures nor as its wall time.
"""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from enum import StrEnum

import dagster as dg
from pydantic import BaseModel

from helios_pipeline.dagster_defs.names import (
    CHUNK_ASSET,
    DATA_VERSION_TAG,
    MIXED_ASSET,
    PLAN_ASSET,
    PLAN_JOB,
    RENDERS,
    WORKER_TAG,
)
from helios_pipeline.dagster_defs.partitions import chunk_partition
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.spec import frames_for_duration

RENDER_PARTITION_TAG = "dagster/partition/render"  # chunk runs (render x chunk)
PARTITION_TAG = "dagster/partition"  # plan, concat and mix runs (render)
CHUNK_PARTITION_TAG = "dagster/partition/chunk"
WILL_RETRY_TAG = "dagster/will_retry"
FINAL_CHECK = "final_video_valid"
RECORDS_LIMIT = 1000
WAITING_TO_START = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED)


class RenderState(StrEnum):
    REGISTERED = "registered"  # a partition, no plan and no run yet
    PLANNING = "planning"  # its plan run is queued or running
    WAITING = "waiting"  # planned, nothing running, nothing failed: chunk runs yet to be launched
    QUEUED = "queued"  # runs are in the run queue, none started
    RENDERING = "rendering"  # chunk runs are running
    JOINING = "joining"  # the concat + mix run is running
    DONE = "done"  # the final video is materialised and its check passed
    FAILED = "failed"  # a run failed (or the final check did) and nothing newer is in flight
    CANCELLED = "cancelled"  # a run was cancelled and nothing newer is in flight


class ChunkState(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RENDERING = "rendering"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ChunkSummary(BaseModel):
    """One chunk of a render's plan: its state, who rendered it, how long it took, why it failed."""

    chunk: str
    state: ChunkState
    frames: int | None = None
    """Frames rendered: the chunk's own when done, its progress while rendering."""
    of_frames: int | None = None
    worker: str | None = None
    wall_seconds: float | None = None
    error: str | None = None
    run_id: str | None = None


class RenderSummary(BaseModel):
    """One render at a glance; ``chunk_details`` only when a single render was asked for."""

    name: str
    state: RenderState
    chunks_done: int = 0
    chunks: int | None = None
    frames: int | None = None
    output: str | None = None
    started: datetime | None = None
    wall_seconds: float | None = None
    error: str | None = None
    chunk_details: list[ChunkSummary] | None = None

    @property
    def label(self) -> str:
        """The state as a person reads it: ``rendering 1/3 chunks``."""
        if self.state in (RenderState.RENDERING, RenderState.QUEUED, RenderState.WAITING) and self.chunks:
            return f"{self.state.value} {self.chunks_done}/{self.chunks} chunks"
        return self.state.value


class UnknownRender(LookupError):
    """A render name the instance has no partition for; ``close`` holds the names it may have meant."""

    def __init__(self, name: str, close: list[str]) -> None:
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        super().__init__(f"no render {name!r} is registered in this Dagster instance{hint}")
        self.name, self.close = name, close


# --- reading the instance ---------------------------------------------------------------------------------


def render_names(instance: dg.DagsterInstance) -> list[str]:
    """Every registered render, in the order they were registered."""
    return list(instance.get_dynamic_partitions(RENDERS))


def all_statuses(instance: dg.DagsterInstance, storage: RenderStorage | None = None) -> list[RenderSummary]:
    files = StorageFiles(storage)  # one for all renders: a storage that failed once is not waited on again
    return [render_status(instance, name, files) for name in render_names(instance)]


def status_of(instance: dg.DagsterInstance, name: str, storage: RenderStorage | None = None) -> RenderSummary:
    """One render with its chunks; ``UnknownRender`` when the instance has no such render."""
    if not instance.has_dynamic_partition(RENDERS, name):
        names = render_names(instance)
        raise UnknownRender(name, difflib.get_close_matches(name, names, n=5, cutoff=0.5))
    return render_status(instance, name, StorageFiles(storage), with_chunks=True)


def render_status(
    instance: dg.DagsterInstance, name: str, files: StorageFiles, with_chunks: bool = False
) -> RenderSummary:
    plan = _latest(instance, PLAN_ASSET, name)
    runs = _render_runs(instance, name)
    attempt_start = _attempt_start(runs, plan)
    attempt = [r for r in runs if not r.dagster_run.is_finished or (r.end_time or 0) >= attempt_start]
    plan_meta = _metadata(plan)
    chunk_count = _int(plan_meta.get("chunks"))
    progress = files if with_chunks else StorageFiles(None)  # the list shows no chunk progress: not read for it
    chunks = _chunk_statuses(instance, name, chunk_count or 0, plan, attempt, progress)
    mixed = _latest(instance, MIXED_ASSET, name, after=plan.timestamp if plan else None)
    status = RenderSummary(
        name=name,
        state=RenderState.REGISTERED,
        chunks_done=sum(chunk.state == ChunkState.DONE for chunk in chunks),
        chunks=chunk_count,
        frames=_int(plan_meta.get("total_frames")),
        output=_text(_metadata(mixed).get("path")) or _text(plan_meta.get("output")),
        chunk_details=chunks if with_chunks else None,
    )
    if plan is None:
        status.frames, status.output = _from_spec(files, name)
    status.state, status.error, ended = _state(instance, attempt, plan, mixed)
    starts = [r.start_time or r.create_timestamp.timestamp() for r in attempt]
    if starts:
        started = min(starts)
        status.started = datetime.fromtimestamp(started, tz=timezone.utc)
        status.wall_seconds = round((ended or time.time()) - started, 1)
    return status


def _state(
    instance: dg.DagsterInstance,
    attempt: list[dg.RunRecord],
    plan: dg.EventLogRecord | None,
    mixed: dg.EventLogRecord | None,
) -> tuple[RenderState, str | None, float | None]:
    """(state, first error, when the render stopped: None while it goes on)."""
    failures = _failures(attempt)
    error = _run_error(instance, failures[0]) if failures else None
    in_flight = [r.dagster_run for r in attempt if not r.dagster_run.is_finished]
    if in_flight:
        stages = {_stage(run) for run in in_flight}
        if "plan" in stages:
            return RenderState.PLANNING, error, None
        if "join" in stages:
            return RenderState.JOINING, error, None
        started = any(run.status not in WAITING_TO_START for run in in_flight)
        return (RenderState.RENDERING if started else RenderState.QUEUED), error, None
    last_end = max((r.end_time or 0 for r in attempt), default=0) or None
    if mixed is not None:
        passed, problems = _final_check(instance, mixed.run_id)
        if passed:
            return RenderState.DONE, None, mixed.timestamp
        return RenderState.FAILED, f"final video check: {problems}", mixed.timestamp
    if failures:
        cancelled = failures[0].dagster_run.status == dg.DagsterRunStatus.CANCELED
        return (RenderState.CANCELLED if cancelled else RenderState.FAILED), error, last_end
    if plan is not None:
        return RenderState.WAITING, None, None
    return RenderState.REGISTERED, None, None


def _stage(run: dg.DagsterRun) -> str:
    """Which part of a render a run works on: its plan, a chunk, or the concat + mix."""
    if CHUNK_PARTITION_TAG in run.tags:
        return "chunk"
    if run.job_name == PLAN_JOB or (run.asset_selection and PLAN_ASSET in run.asset_selection):
        return "plan"
    return "join"


def _render_runs(instance: dg.DagsterInstance, name: str) -> list[dg.RunRecord]:
    """The render's runs, oldest first: chunk runs carry the render dimension's tag, the others the partition's."""
    records: dict[str, dg.RunRecord] = {}
    for tags in ({RENDER_PARTITION_TAG: name}, {PARTITION_TAG: name}):
        for record in instance.get_run_records(dg.RunsFilter(tags=tags)):
            records[record.dagster_run.run_id] = record
    return sorted(records.values(), key=lambda record: record.create_timestamp)


def _attempt_start(runs: list[dg.RunRecord], plan: dg.EventLogRecord | None) -> float:
    """When the render's current attempt began: the creation of the run that made its latest plan."""
    if plan is None:
        return 0.0
    for record in runs:
        if record.dagster_run.run_id == plan.run_id:
            return record.create_timestamp.timestamp()
    return plan.timestamp


def _failures(attempt: list[dg.RunRecord]) -> list[dg.RunRecord]:
    """Failed or cancelled runs that nothing newer replaced (a retry, a re-execution): failed ones first.

    Runs are grouped by what they work on (stage and chunk); only the newest of a group counts, and a
    failed run Dagster is about to retry does not count.
    """
    newest: dict[tuple[str, str], dg.RunRecord] = {}
    for record in attempt:  # oldest first: later runs replace earlier ones
        run = record.dagster_run
        newest[(_stage(run), run.tags.get(CHUNK_PARTITION_TAG, ""))] = record
    ended_badly = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    found = [
        record
        for record in newest.values()
        if record.dagster_run.status in ended_badly and record.dagster_run.tags.get(WILL_RETRY_TAG) != "true"
    ]
    # a real failure first: when one chunk fails, the CLI cancels the render's other runs, and their
    # "terminated" must not hide the error that ended the render
    return sorted(found, key=lambda r: (r.dagster_run.status != dg.DagsterRunStatus.FAILURE, r.create_timestamp))


def _run_error(instance: dg.DagsterInstance, record: dg.RunRecord) -> str:
    """Why a run failed, naming its chunk: ``chunk 001: frame 20: the page threw: …``."""
    run = record.dagster_run
    message = _run_failure(instance, run)
    chunk = run.tags.get(CHUNK_PARTITION_TAG)
    return message if chunk is None or message.startswith("chunk") else f"chunk {chunk}: {message}"


def _run_failure(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """The first step failure of a run (what the step raised), else why the run itself ended."""
    for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        data = entry.dagster_event.step_failure_data if entry.dagster_event else None
        if data is None:
            continue
        described = data.user_failure_data.description if data.user_failure_data else None
        message = described or (data.error.message if data.error else None)
        if message:
            return message.strip()
    ended = {dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED}
    for entry in instance.all_logs(run.run_id, of_type=ended):
        if entry.dagster_event and entry.dagster_event.message:
            return entry.dagster_event.message.strip()
    return f"run {run.run_id} ended {run.status.value}"


def _final_check(instance: dg.DagsterInstance, run_id: str) -> tuple[bool, str]:
    """Did the final video's check pass in the run that made the video? (passed, its problems)."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        if data is None or data.check_name != FINAL_CHECK:
            continue
        problems = data.metadata.get("problems")
        return bool(data.passed), _text(problems) or "failed"
    return False, "did not run"


def _chunk_statuses(
    instance: dg.DagsterInstance,
    name: str,
    count: int,
    plan: dg.EventLogRecord | None,
    attempt: list[dg.RunRecord],
    files: StorageFiles,
) -> list[ChunkSummary]:
    """One row per chunk of the plan: done when materialised for the plan's pictures (since the plan, or
    before it when only the sound changed: its data version says so), else what its newest run says."""
    if plan is None or count == 0:
        return []
    partitions = [str(chunk_partition(name, index)) for index in range(count)]
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=CHUNK_ASSET, asset_partitions=partitions), limit=RECORDS_LIMIT
    ).records
    pictures = _data_version(plan)
    materialised: dict[str, dg.EventLogRecord] = {}
    for record in records:  # newest first
        materialization = record.asset_materialization
        if materialization is None or materialization.metadata.get("skipped") is not None:
            continue
        current = record.timestamp >= plan.timestamp or (
            pictures is not None and (_data_version(record) or "").startswith(f"{pictures}-")
        )
        if not current:
            continue
        partition = str(materialization.partition)
        if partition not in materialised:
            materialised[partition] = record
    newest_run: dict[str, dg.RunRecord] = {}
    for record in attempt:
        if _stage(record.dagster_run) == "chunk":
            newest_run[record.dagster_run.tags[CHUNK_PARTITION_TAG]] = record
    return [
        _chunk_status(instance, name, index, materialised.get(partition), newest_run.get(f"{index:03d}"), files)
        for index, partition in enumerate(partitions)
    ]


def _chunk_status(
    instance: dg.DagsterInstance,
    name: str,
    index: int,
    materialised: dg.EventLogRecord | None,
    run_record: dg.RunRecord | None,
    files: StorageFiles,
) -> ChunkSummary:
    chunk = f"{index:03d}"
    run = run_record.dagster_run if run_record else None
    if materialised is not None and (run is None or run.is_finished or run.run_id == materialised.run_id):
        metadata = _metadata(materialised)
        frames = _int(metadata.get("frames"))
        return ChunkSummary(
            chunk=chunk,
            state=ChunkState.DONE,
            frames=frames,
            of_frames=frames,
            worker=_text(metadata.get("worker_id")),
            wall_seconds=_float(metadata.get("wall_seconds")),
            run_id=materialised.run_id,
        )
    if run is None or run_record is None:
        return ChunkSummary(chunk=chunk, state=ChunkState.PENDING)
    start = run_record.start_time
    wall = round((run_record.end_time or time.time()) - start, 1) if start else None
    worker = run.tags.get(WORKER_TAG)
    status = ChunkSummary(chunk=chunk, state=ChunkState.PENDING, worker=worker, wall_seconds=wall, run_id=run.run_id)
    if run.status in WAITING_TO_START:
        status.state = ChunkState.QUEUED
    elif not run.is_finished:
        status.state = ChunkState.RENDERING
        status.frames, status.of_frames = _progress(files, name, index)
    elif run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
        cancelled = run.status == dg.DagsterRunStatus.CANCELED
        status.state = ChunkState.CANCELLED if cancelled else ChunkState.FAILED
        status.error = _run_failure(instance, run)
    return status


# --- the storage, for what the instance does not hold (best effort) ---------------------------------------


class StorageFiles:
    """The render storage, read for a column or two: after its first failure (an unreachable bucket, missing
    credentials) it is not asked again, so a status never waits on a storage more than once."""

    def __init__(self, storage: RenderStorage | None) -> None:
        self.storage = storage
        self.broken = storage is None

    def read(self, key: str) -> bytes | None:
        if self.broken or self.storage is None:
            return None
        try:
            return self.storage.store.read_bytes(key)
        except Exception:  # an unreadable storage only leaves a column empty
            self.broken = True
            return None


def _progress(files: StorageFiles, name: str, index: int) -> tuple[int | None, int | None]:
    """A rendering chunk's progress record: (frames rendered, of frames)."""
    raw = files.read(f"renders/{name}/progress/{index:03d}.json")
    try:
        data = json.loads(raw) if raw else {}
        return int(data["frames"]), int(data["of"])
    except (ValueError, KeyError, TypeError):
        return None, None


def _from_spec(files: StorageFiles, name: str) -> tuple[int | None, str | None]:
    """Frames and output of a render that has no plan yet, from its registered spec (not validated again:
    its composition may live on another machine)."""
    raw = files.read(f"renders/{name}/spec.json")
    try:
        spec = json.loads(raw) if raw else {}
        frames = spec.get("frame_count") or frames_for_duration(spec["duration_in_seconds"], spec["fps"])
        return int(frames), str(spec["output"]) if spec.get("output") else None
    except (ValueError, KeyError, TypeError):
        return None, None


# --- small readers ------------------------------------------------------------------------------------------


def _latest(
    instance: dg.DagsterInstance, asset: dg.AssetKey, partition: str, after: float | None = None
) -> dg.EventLogRecord | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[partition], after_timestamp=after), limit=1
    ).records
    return records[0] if records else None


def _metadata(record: dg.EventLogRecord | None) -> dict[str, dg.MetadataValue]:
    if record is None or record.asset_materialization is None:
        return {}
    return dict(record.asset_materialization.metadata)


def _int(value: dg.MetadataValue | None) -> int | None:
    return None if value is None or value.value is None else int(value.value)  # type: ignore[arg-type]


def _float(value: dg.MetadataValue | None) -> float | None:
    return None if value is None or value.value is None else round(float(value.value), 2)  # type: ignore[arg-type]


def _text(value: dg.MetadataValue | None) -> str | None:
    return None if value is None or value.value is None else str(value.value)


def as_json(statuses: RenderSummary | Iterable[RenderSummary]) -> str:
    """``--json``: one object for one render, a list for all of them (``label`` included)."""

    def dump(status: RenderSummary) -> dict:
        return {**status.model_dump(mode="json", exclude_none=False), "label": status.label}

    if isinstance(statuses, RenderSummary):
        return json.dumps(dump(statuses), indent=2)
    return json.dumps([dump(status) for status in statuses], indent=2)


__all__ = ["RenderState", "RenderSummary", "UnknownRender", "all_statuses", "status_of"]


def _data_version(record: dg.EventLogRecord) -> str | None:
    """The data version an asset event recorded (the plan's is the picture fingerprint, a chunk's starts with it)."""
    materialization = record.asset_materialization
    return (materialization.tags or {}).get(DATA_VERSION_TAG) if materialization is not None else None
