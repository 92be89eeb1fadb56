"""The render assets: plan -> chunk (render x chunk) -> concat -> mixed video.

Each asset calls one engine function and records what it measured as numeric metadata, so
the UI can plot timings across partitions. Retries, parallelism and failure propagation are
Dagster's: a chunk is a partition, each partition its own run.
"""

import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from helios_pipeline.dagster_defs import private_api
from helios_pipeline.dagster_defs.inbox import Inbox, spec_named
from helios_pipeline.dagster_defs.names import (
    BACKFILL_PLAN_TAG,
    CHUNK_ASSET,
    CHUNK_POOL,
    CONCAT_ASSET,
    DATA_VERSION_TAG,
    GROUP,
    PLAN_ASSET,
    WORKER_TAG,
)
from helios_pipeline.dagster_defs.partitions import (
    ALL_CHUNKS_OF_RENDER,
    SETTINGS,
    chunk_partition,
    chunk_partitions,
    renders,
)
from helios_pipeline.dagster_defs.previews import embedded_image, jpeg_budget
from helios_pipeline.dagster_defs.registry import register_spec_file
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.disk_full import DiskFull
from helios_pipeline.engine.assemble import join_chunks, mix_with_preview
from helios_pipeline.engine.chunk_compat import ChunkFacts, check_chunks_compatible
from helios_pipeline.engine.contact_sheet import contact_sheet_path
from helios_pipeline.engine.errors import PageError, RenderError
from helios_pipeline.engine.fileio import atomic_output
from helios_pipeline.engine.poster import poster_path
from helios_pipeline.engine.probe import probe
from helios_pipeline.fingerprint import ENGINE_VERSION
from helios_pipeline.interruptible import interrupts_set
from helios_pipeline.network import describe_refusals
from helios_pipeline.plan import RenderChunk
from helios_pipeline.spec import SpecError, sanitize_key
from helios_pipeline.storage import ObjectInfo, StorageError
from helios_pipeline.storage.s3 import download_from_uri, presigned_url, upload_to_uri

CHUNK_RETRY = dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
PROGRESS_INTERVAL_S = 0.5
REMOTE_PROGRESS_INTERVAL_S = 2.0  # one small PUT per chunk every 2 s
CHUNK_PREVIEW_CHARS = 999
"""A chunk's first-frame thumbnail: the UI shows Markdown under 1,000 characters inline in the partition's
metadata table (longer text hides behind "[Show Markdown]"), and 128 chunks add only ~128 KB to the event log."""
FINAL_PREVIEW_CHARS = 150_000
"""The final video's contact sheet: behind "[Show Markdown]", small enough to keep the event log light."""


def worker_id() -> str:
    """Which worker rendered a chunk: ``HELIOS_WORKER_ID`` (set by ``helios-pipeline worker``), else the host."""
    return os.environ.get("HELIOS_WORKER_ID") or socket.gethostname()


def _fail(exc: Exception, *, retryable: bool) -> dg.Failure:
    return dg.Failure(description=str(exc), allow_retries=retryable)


# A terminated run (UI "Terminate", the CLI's Ctrl-C) interrupts its step. Dagster retries an interrupted
# step that has a RetryPolicy, which rendered a terminated chunk all over again and ended its run in SUCCESS;
# and an interrupt inside a browser call can surface as some other error. Once the run is being terminated, a
# chunk fails without retry, and its run ends CANCELED.
INTERRUPTS = (dg.DagsterExecutionInterruptedError, KeyboardInterrupt)


def _run_terminating(context: dg.AssetExecutionContext) -> bool:
    run = context.instance.get_run_by_id(context.run.run_id)
    return run is not None and run.status in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED)


def _terminated(render_key: str, index: int) -> dg.Failure:
    return dg.Failure(description=f"chunk {index:03d} of {render_key}: the run was terminated", allow_retries=False)


# A render's plan is requested by whatever registered the render (the inbox sensor, the scheduled
# render's follow-up sensor, the CLI, a backfill from the UI), never by automation on its own: a
# partition added by hand in the UI waits for the user's backfill instead of racing it.
# Chunks, concat and mix: `eager()` without its reset on the first evaluation. eager() forgets any
# trigger seen on the automation sensor's first tick, so a plan materialised before the daemon's
# first evaluation (the CLI on a fresh instance) would never have its chunks rendered.
# A partition that a run or backfill is working on also resets the trigger: what a backfill leaves
# undone (cancelled with Ctrl-C, or a chunk that failed) stays undone, instead of automation picking
# it up once the backfill has ended.
def _when_inputs_ready(trigger: dg.AutomationCondition) -> dg.AutomationCondition:
    # Nothing starts while an input's latest run failed: a re-rendered render still has its previous
    # chunks, so without this a concat would start (and fail on the stale chunk) when one chunk of the
    # new version failed, and the user would see the concat's error instead of the chunk's.
    return (
        trigger.since(
            dg.AutomationCondition.newly_requested()
            | dg.AutomationCondition.newly_updated()
            | dg.AutomationCondition.in_progress()
        )
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.any_deps_match(dg.AutomationCondition.execution_failed())
        & ~dg.AutomationCondition.in_progress()
    ).with_label("render when its inputs are ready")


_PLAN = dg.AssetSelection.assets(PLAN_ASSET)
# The plan's data version is the picture fingerprint: chunks follow its changes only, so a re-plan
# after an edit of the sound alone (or of nothing that shows) renders no frame.
PICTURES_CHANGED = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed()).allow(_PLAN)
# ...and the mix takes it from there: a re-plan whose pictures stayed the same re-mixes the concat at
# once; one whose pictures changed waits for the new concat. A plan the CLI made for its own backfill
# (tagged BACKFILL_PLAN_TAG) is left to that backfill.
SAME_PICTURES_REPLANNED = dg.AutomationCondition.any_deps_match(
    dg.AutomationCondition.newly_updated()
    & ~dg.AutomationCondition.data_version_changed()
    & ~dg.AutomationCondition.any_new_update_has_run_tags(tag_keys={BACKFILL_PLAN_TAG})
).allow(_PLAN)

CHUNK_IN_PLAN = "in_plan"
"""The chunk partition's check that the render's plan uses it: failed (a warning) on the partitions it leaves unused."""
# An unused chunk partition is never requested, whatever order an automation tick sees the plan's records in.
NOT_LEFT_UNUSED = ~dg.AutomationCondition.any_checks_match(dg.AutomationCondition.check_failed())
with warnings.catch_warnings():  # a check status per chunk partition: preview in Dagster 1.13 (pinned)
    warnings.simplefilter("ignore", dg.PreviewWarning)
    IN_PLAN_CHECK = dg.AssetCheckSpec(
        CHUNK_IN_PLAN,
        asset="chunk_video",
        partitions_def=chunk_partitions,  # a status per chunk partition, not one for the whole asset
        description="the render's plan uses this chunk partition; one it leaves unused is recorded empty, "
        "with this check failed (a warning), and is never run by automation",
    )
CHUNK_CONDITION = _when_inputs_ready(dg.AutomationCondition.newly_missing() | PICTURES_CHANGED) & NOT_LEFT_UNUSED
STAGE_CONDITION = _when_inputs_ready(dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated())
# The mix joins the concat's run (a concat about to be requested), instead of following the concat's record: a
# tick can see the run's concat recorded before its mix, and the run no longer in progress, and would start a
# second, mix-only run of a render that is already mixed (seen under load).
CONCAT_REQUESTED = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested()).ignore(_PLAN)
MIX_CONDITION = _when_inputs_ready(dg.AutomationCondition.newly_missing() | CONCAT_REQUESTED | SAME_PICTURES_REPLANNED)


@dg.asset(
    partitions_def=renders,
    group_name=GROUP,
    code_version=ENGINE_VERSION,
    description="The render's plan: frame ranges per chunk, files, mix. Its data version is the picture "
    "fingerprint (spec + composition + subtitles, not the spec's audio), so a changed composition marks the "
    "chunks stale and an edit of the sound alone re-runs only the mix.",
)
def render_plan(context: dg.AssetExecutionContext, storage: RenderStorage, inbox: Inbox) -> dg.MaterializeResult:
    key = context.partition_key
    try:
        _register_from_spec_folders(key, storage, inbox, context.instance)
        plan = storage.plan_for(key)
    except (SpecError, ValueError, StorageError) as exc:
        raise _fail(exc, retryable=False) from None
    if len(plan.chunks) > SETTINGS.max_chunks:
        raise _fail(
            SpecError(str(storage.spec_file(key)), [("concurrency", f"{len(plan.chunks)} chunks exceed the "
                      f"deployment's limit of {SETTINGS.max_chunks} (HELIOS_MAX_CHUNKS)")]),
            retryable=False,
        )  # fmt: skip
    plan_file = storage.render_dir(key) / "plan.json"
    with atomic_output(plan_file) as partial:
        partial.write_text(plan.model_dump_json(indent=2), encoding="utf-8")
    storage.publish(key, plan_file)
    spec = plan.spec
    fingerprints = storage.refresh_fingerprint(key, spec)
    picture = fingerprints["picture_fingerprint"]
    # the checks go into the plan's run (one per partition and run), before the plan's own materialisation
    report_unused_chunks(context.instance, key, len(plan.chunks), picture, record_check=context.log_event)
    return dg.MaterializeResult(
        metadata={
            "total_frames": plan.total_frames,
            "chunks": len(plan.chunks),
            "start_frame": spec.start_frame,
            "fps": spec.fps,
            "width": spec.width,
            "height": spec.height,
            "duration_seconds": plan.total_frames / spec.fps,
            "composition": dg.MetadataValue.text(spec.composition),
            "fingerprint": dg.MetadataValue.text(fingerprints["fingerprint"]),
            "picture_fingerprint": dg.MetadataValue.text(picture),
            "plan": dg.MetadataValue.path(storage.uri_of(key, plan_file)),
            "output": dg.MetadataValue.path(spec.output_uri or str(plan.final_output_file)),
        },
        data_version=dg.DataVersion(picture),
    )


def _register_from_spec_folders(key: str, storage: RenderStorage, inbox: Inbox, instance: dg.DagsterInstance) -> None:
    """Register a partition added by hand in the UI from its spec file, named like the partition.

    A spec in the UI's folder is read again at every plan, so a person who edits it and launches
    again renders it as edited. Otherwise a registered render keeps its snapshot, and an inbox spec
    the sensor has not registered yet is taken from the inbox.
    """
    if key != sanitize_key(key):
        raise SpecError(
            f"partition {key!r}",
            [("", f"a render's name may hold only lower-case letters, digits, '-' and '_': add a partition "
                  f"named {sanitize_key(key)!r} (and a spec file of that name) instead")],
        )  # fmt: skip
    ui_spec = spec_named(inbox.ui_path, key)
    if ui_spec is not None:
        register_spec_file(storage, ui_spec, SETTINGS.max_chunks, key, instance)
        return
    if storage.has_spec(key):
        return
    inbox_spec = spec_named(inbox.path, key)
    if inbox_spec is None:
        raise SpecError(
            str(inbox.ui_path / f"{key}.yaml"),
            [("", f"render {key!r} is not registered and no spec file {key}.yaml (.yml, .json) is in "
                  f"{inbox.ui_path} (HELIOS_UI_SPECS) or {inbox.path} (HELIOS_INBOX): save its spec there and "
                  "launch again")],
        )  # fmt: skip
    register_spec_file(storage, inbox_spec, SETTINGS.max_chunks, key, instance)


def report_unused_chunks(
    instance: dg.DagsterInstance,
    key: str,
    used: int,
    fingerprint: str,
    record_check: Callable[[dg.AssetCheckEvaluation], None],
) -> None:
    """Chunk partitions beyond the plan are recorded as empty right away, so no run is spent on them.

    Each unused partition also gets a failed ``in_plan`` check, which keeps automation from ever
    requesting it: unlike the empty record (an *event*, which an automation tick can see before or
    after the plan's own materialisation), the check's status is *state*, recorded before the plan
    is, so every tick that sees the new plan sees it too. A partition the plan uses again after an
    earlier plan left it unused gets its check passed. A partition already recorded as empty is not
    recorded again when the render is planned again: a new record would count as an update of the
    chunk, and automation would start the concat while the re-planned render's real chunks are
    still to be rendered. ``record_check`` records a check result (the plan's ``context.log_event``:
    Dagster keeps one result per partition and run, so they cannot be reported without a run).
    """
    partitions = [str(chunk_partition(key, index)) for index in range(SETTINGS.max_chunks)]
    latest = _latest_records(instance, CHUNK_ASSET, partitions)
    for index, partition in enumerate(partitions):
        record = latest.get(partition)
        empty = record is not None and record.asset_materialization.metadata.get("skipped") is not None
        if index < used:
            if empty:  # unused by an earlier plan: its failed check must not hold this plan's chunk back
                record_check(private_api.check_evaluation_of(record, CHUNK_IN_PLAN, True))
            continue
        if not empty:
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    asset_key=CHUNK_ASSET,
                    partition=partition,
                    description=unused_chunk_reason(used),
                    metadata=unused_chunk_metadata(used),
                    tags={DATA_VERSION_TAG: f"{fingerprint}-none"},
                )
            )
            record = _latest_records(instance, CHUNK_ASSET, [partition])[partition]
        record_check(
            private_api.check_evaluation_of(
                record,
                CHUNK_IN_PLAN,
                False,
                severity=dg.AssetCheckSeverity.WARN,
                description=unused_chunk_reason(used),
            )
        )


def _latest_records(instance: dg.DagsterInstance, asset: dg.AssetKey, partitions: list[str]) -> dict[str, Any]:
    """The latest materialisation record of each of ``partitions`` that has one."""
    latest: dict[str, Any] = {}
    for partition in partitions:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[partition]), limit=1
        ).records
        if records and records[0].asset_materialization is not None:
            latest[partition] = records[0]
    return latest


def unused_chunk_reason(used: int) -> str:
    return f"unused: the plan of this render has {used} chunk{'s' if used != 1 else ''}"


def unused_chunk_metadata(used: int) -> dict[str, object]:
    """What an unused chunk partition records: empty, and saying so where a rendered chunk shows its picture.

    Its status stays "materialised" (the concat waits for every chunk partition of its render, and a
    backfill for every partition it targets), so the difference is in the metadata the partition shows.
    """
    reason = unused_chunk_reason(used)
    return {
        "preview": dg.MetadataValue.md(reason.replace("unused:", "**unused** —", 1)),
        "skipped": True,
        "frames": 0,
        "reason": reason,
    }


@dg.asset(
    partitions_def=chunk_partitions,
    deps=[render_plan],
    group_name=GROUP,
    code_version=ENGINE_VERSION,
    pool=CHUNK_POOL,
    retry_policy=CHUNK_RETRY,
    automation_condition=CHUNK_CONDITION,
    check_specs=[IN_PLAN_CHECK],
    description="One chunk of a render: a frame range rendered in its own Chromium into a closed-GOP file; "
    "its preview is its first frame. Chunk indices beyond the render's plan materialise as empty partitions "
    "whose preview reads 'unused'.",
)
def chunk_video(context: dg.AssetExecutionContext, storage: RenderStorage) -> dg.MaterializeResult:
    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    render_key, index = keys["render"], int(keys["chunk"])
    if _run_terminating(context):  # a retry of a step interrupted before it got to the render below
        raise _terminated(render_key, index)
    try:
        plan = storage.plan_for(render_key)
        fingerprint = storage.picture_fingerprint(render_key, plan.spec)
    except (SpecError, ValueError) as exc:
        raise _fail(exc, retryable=False) from None
    except StorageError as exc:  # storage unreachable, or the bundle missing or corrupt: a retry may help
        raise _fail(exc, retryable=True) from None
    if index >= len(plan.chunks):  # a backfill of every chunk partition (the UI's) runs the unused ones too
        return dg.MaterializeResult(
            metadata=unused_chunk_metadata(len(plan.chunks)),
            data_version=dg.DataVersion(f"{fingerprint}-none"),
            check_results=[
                dg.AssetCheckResult(
                    check_name=CHUNK_IN_PLAN,
                    passed=False,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=unused_chunk_reason(len(plan.chunks)),
                )
            ],
        )
    chunk = plan.chunks[index]
    # who renders it, on the run itself: a chunk still rendering or failed has no metadata to say so
    context.instance.add_run_tags(context.run.run_id, {WORKER_TAG: worker_id()})
    interval = REMOTE_PROGRESS_INTERVAL_S if storage.is_remote else PROGRESS_INTERVAL_S
    last_write = [0.0]

    def on_progress(frames: int) -> None:
        now = time.monotonic()
        if frames == chunk.frame_count or now - last_write[0] >= interval:
            last_write[0] = now
            try:
                storage.write_progress(render_key, index, frames, chunk.frame_count)
            except StorageError as exc:  # progress is for people watching: never fail a chunk over it
                context.log.warning(f"progress not recorded: {exc}")

    context.log.info(f"rendering frames {chunk.start_frame}..{chunk.end_frame - 1} of {render_key}")
    from helios_pipeline.dagster_defs.run_worker import prestarted_browser  # the warm launcher's head start
    from helios_pipeline.engine.begin_frame import wants_begin_frame
    from helios_pipeline.engine.chunk import render_chunk  # the capture engine: only chunk runs import it

    cancel = threading.Event()  # a SIGINT or SIGTERM to the run worker while it renders (see interrupts_set)
    try:
        with interrupts_set(cancel):
            result = render_chunk(
                plan.spec,
                chunk,
                on_progress=on_progress,
                cancel=cancel,
                browser=prestarted_browser(wants_begin_frame(plan.spec)),
                # the encoding run writes the preview too: none decodes the chunk for it on the critical path
                preview_bytes=jpeg_budget(Path(chunk.output_file), CHUNK_PREVIEW_CHARS),
            )
    except PageError as exc:  # the page itself is broken (throws, never ready, never yields): retrying cannot help
        raise _fail(exc, retryable=False) from None
    except BaseException as exc:
        if isinstance(exc, INTERRUPTS) or cancel.is_set() or _run_terminating(context):
            raise _terminated(render_key, index) from None
        if isinstance(exc, RenderError):  # browser crash, FFmpeg failure, load error, StuckError: worth a retry
            raise _fail(exc, retryable=not isinstance(exc, DiskFull)) from None  # unless the disk is full
        raise
    if result.blocked_requests:
        context.log.warning(describe_refusals(result.blocked_requests, result.blocked_urls, result.blocked_rule))
    output = Path(result.output_file)
    thumbnail = preview_or_note(context, output, CHUNK_PREVIEW_CHARS, result.first_frame_previews)
    upload_started = time.perf_counter()
    try:
        stored = storage.publish(render_key, output)
    except StorageError as exc:
        raise _fail(exc, retryable=not isinstance(exc, DiskFull)) from None
    finally:
        if storage.is_remote:  # the worker's disk holds only what it is rendering
            output.unlink(missing_ok=True)
    return dg.MaterializeResult(
        metadata={
            "preview": thumbnail,
            "frames": result.frame_count,
            "first_frame": result.start_frame,
            "last_frame": result.start_frame + result.frame_count - 1,
            "wall_seconds": result.wall_seconds,
            "capture_fps": result.capture_fps,
            "browser_startup_seconds": result.browser_startup_seconds,
            "capture_seconds": result.capture_seconds,
            "encode_seconds": result.encode_seconds,
            "encode_cpu_seconds": result.encode_cpu_seconds,
            "bytes": result.bytes,
            "capture_method": dg.MetadataValue.text(result.capture_method),
            "page_audio_sources": result.page_audio_sources,
            "worker_id": dg.MetadataValue.text(worker_id()),
            "chromium_version": dg.MetadataValue.text(result.chromium_version),
            "ffmpeg_version": dg.MetadataValue.text(result.ffmpeg_version),
            "encoder_settings": dg.MetadataValue.json(result.encoder_settings),
            "blocked_requests": result.blocked_requests,
            "blocked_urls": dg.MetadataValue.json(result.blocked_urls),
            "blocked_rule": dg.MetadataValue.text(result.blocked_rule or "none"),
            "worker_host": dg.MetadataValue.text(result.host),
            "worker_pid": result.pid,
            "upload_seconds": time.perf_counter() - upload_started,
            "sha256": dg.MetadataValue.text(stored.sha256),
            "path": dg.MetadataValue.path(storage.uri_of(render_key, output)),
        },
        data_version=dg.DataVersion(f"{fingerprint}-{chunk.start_frame}-{chunk.frame_count}"),
        check_results=[dg.AssetCheckResult(check_name=CHUNK_IN_PLAN, passed=True)],
    )


def preview_or_note(
    context: dg.AssetExecutionContext, picture: Path, max_chars: int, ladder: Sequence[bytes] = ()
) -> dg.MarkdownMetadataValue:
    """``picture`` embedded for the UI; a preview is for people, so one that cannot be made never fails the asset.
    ``ladder``: JPEGs of it made already (``previews.embedded_image``)."""
    try:
        return embedded_image(picture, max_chars, ladder)
    except RenderError as exc:
        context.log.warning(f"no preview: {exc}")
        return dg.MetadataValue.md(f"no preview: {exc}")


CHUNKS_COMPLETE = "chunks_complete"


@dg.asset(
    partitions_def=renders,
    deps=[dg.AssetDep(chunk_video, partition_mapping=ALL_CHUNKS_OF_RENDER)],
    group_name=GROUP,
    code_version=ENGINE_VERSION,
    automation_condition=STAGE_CONDITION,
    check_specs=[dg.AssetCheckSpec(CHUNKS_COMPLETE, asset="concat_video", blocking=True,
                                   description="every chunk present and the joined frame count equals the plan")],
    description="All chunks of a render joined by stream copy (no re-encode).",
)  # fmt: skip
def concat_video(context: dg.AssetExecutionContext, storage: RenderStorage):
    render_key = context.partition_key
    plan = storage.plan_for(render_key)
    fingerprint = storage.picture_fingerprint(render_key, plan.spec)
    problems: dict[str, str] = {}
    facts: list[ChunkFacts] = []
    fetch_started = time.perf_counter()
    for chunk in plan.chunks:
        problem = _fetch_chunk(context.instance, storage, render_key, chunk, fingerprint, facts)
        if problem:
            problems[f"{chunk.id:03d}"] = problem
    fetch_seconds = time.perf_counter() - fetch_started
    if not problems:
        try:  # stream copy needs identical encoder settings: chunks from differing workers are refused
            check_chunks_compatible(facts)
        except RenderError as exc:
            problems["settings"] = str(exc)
    if problems:
        missing = [index for index, problem in problems.items() if problem == NOT_RENDERED]
        yield dg.AssetCheckResult(
            check_name=CHUNKS_COMPLETE,
            passed=False,
            metadata={
                "missing_chunks": dg.MetadataValue.text(", ".join(missing) or "none"),
                "problems": dg.MetadataValue.text(_describe(problems)),
                "expected": len(plan.chunks),
            },
        )
        if missing and len(missing) == len(problems):
            description = (
                f"render {render_key}: chunks {', '.join(missing)} are not rendered; "
                "materialise them before the concat (a short video is never produced)"
            )
        else:
            description = f"render {render_key}: " + _describe(problems)
        raise dg.Failure(description=description, allow_retries=False)
    try:
        result = join_chunks(plan, facts)
        stored = storage.publish(render_key, plan.concat_output_file)
    except (RenderError, StorageError) as exc:
        raise _fail(exc, retryable=False) from None
    finally:
        if storage.is_remote:  # the fetched chunks were only needed for the join
            for chunk_file in plan.concat_manifest:
                Path(chunk_file).unlink(missing_ok=True)
    info = probe(plan.concat_output_file)  # its packet count is the frame count: one ffprobe for both
    frames = info.video_frames
    yield dg.MaterializeResult(
        metadata={
            "seconds": result.seconds,
            "fetch_seconds": fetch_seconds,
            "bytes": result.bytes,
            "sha256": dg.MetadataValue.text(stored.sha256),
            "frames": frames,
            "chunks": result.chunks,
            "duration_seconds": frames / plan.spec.fps,
            "video_codec": dg.MetadataValue.text(info.video_codec),
            "audio_codec": dg.MetadataValue.text(info.audio_codec or "none"),
            "path": dg.MetadataValue.path(storage.uri_of(render_key, plan.concat_output_file)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CHUNKS_COMPLETE,
                passed=frames == plan.total_frames,
                metadata={"frames": frames, "expected_frames": plan.total_frames},
            )
        ],
        data_version=dg.DataVersion(fingerprint),  # the pictures it holds: a sound edit re-mixes this concat
    )


NOT_RENDERED = "not rendered"


def _describe(problems: dict[str, str]) -> str:
    return "; ".join(
        problem if index == "settings" else f"chunk {index}: {problem}" for index, problem in problems.items()
    )


def _latest(instance: dg.DagsterInstance, asset: dg.AssetKey, partition: str) -> dg.AssetMaterialization | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[partition]), limit=1
    ).records
    return records[0].asset_materialization if records else None


def _stored_info(materialization: dg.AssetMaterialization) -> ObjectInfo | None:
    """Size and checksum recorded when the file was published (None for records made before checksums)."""
    metadata = materialization.metadata
    if "sha256" not in metadata or "bytes" not in metadata:
        return None
    return ObjectInfo(size=int(metadata["bytes"].value), sha256=str(metadata["sha256"].value))


def _fetch_chunk(
    instance: dg.DagsterInstance,
    storage: RenderStorage,
    render_key: str,
    chunk: RenderChunk,
    fingerprint: str,
    facts: list[ChunkFacts],
) -> str | None:
    """Bring one chunk of the render's current plan here, verified; what is wrong with it, or None.

    A chunk must be the one materialised for this plan (its data version names the plan's fingerprint
    and frame range) and must hash to what its run recorded, so a stale or damaged chunk is never joined.
    """
    partition = str(dg.MultiPartitionKey({"render": render_key, "chunk": f"{chunk.id:03d}"}))
    record = _latest(instance, CHUNK_ASSET, partition)
    if record is None or record.metadata.get("skipped") is not None:
        return NOT_RENDERED
    expected_version = f"{fingerprint}-{chunk.start_frame}-{chunk.frame_count}"
    version = (record.tags or {}).get(DATA_VERSION_TAG)
    if version is not None and version != expected_version:
        return (f"rendered for another version of the render (data version {version}, the plan needs "
                f"{expected_version}): render it again")  # fmt: skip
    try:
        storage.fetch(render_key, Path(chunk.output_file), _stored_info(record))
    except StorageError as exc:
        return str(exc)
    metadata = record.metadata
    settings = metadata.get("encoder_settings")
    facts.append(
        ChunkFacts(
            chunk_id=chunk.id,
            worker=str(metadata["worker_id"].value) if "worker_id" in metadata else "unknown",
            host=str(metadata["worker_host"].value) if "worker_host" in metadata else "unknown",
            encoder_settings=dict(settings.value) if settings is not None else {},
        )
    )
    return None


@dg.asset(
    partitions_def=renders,
    deps=[concat_video, render_plan],  # the plan: an edit of the sound alone re-mixes (MIX_CONDITION)
    group_name=GROUP,
    code_version=ENGINE_VERSION,
    automation_condition=MIX_CONDITION,
    description="The finished video: the concat with every audio track mixed once; a contact sheet beside it, "
    "shown as its preview, and the spec's poster_frame as <stem>.poster.png.",
)
def mixed_video(context: dg.AssetExecutionContext, storage: RenderStorage) -> dg.MaterializeResult:
    render_key = context.partition_key
    plan = storage.plan_for(render_key)
    final = plan.final_output_file
    try:
        concat = _latest(context.instance, CONCAT_ASSET, render_key)
        storage.fetch(render_key, plan.concat_output_file, _stored_info(concat) if concat else None)
        # the sheet's FFmpeg run also writes its preview's JPEGs: no second run decodes the sheet after it
        finished = mix_with_preview(plan, preview_bytes=jpeg_budget(contact_sheet_path(final), FINAL_PREVIEW_CHARS))
        mix, sheet = finished.mix, finished.contact_sheet
        info = probe(final)
        preview = preview_or_note(context, sheet, FINAL_PREVIEW_CHARS, finished.contact_sheet_previews)
        links = _publish_output(storage, plan.final_output_uri, final, sheet)
        if finished.poster is not None:
            links |= _publish_poster(context, storage, plan.final_output_uri, finished.poster)
    except (RenderError, StorageError) as exc:
        raise _fail(exc, retryable=False) from None
    finally:
        if storage.is_remote:
            plan.concat_output_file.unlink(missing_ok=True)
    return dg.MaterializeResult(
        metadata={
            "preview": preview,
            "seconds": mix.seconds,
            "bytes": mix.bytes,
            "duration_seconds": info.duration,
            "frames": info.video_frames,
            "width": info.width,
            "height": info.height,
            "video_codec": dg.MetadataValue.text(info.video_codec),
            "audio_codec": dg.MetadataValue.text(info.audio_codec or "none"),
            "audio_tracks": mix.audio_tracks,
            **links,
        },
        data_version=dg.DataVersion(storage.fingerprint(render_key, plan.spec)),
    )


def _publish_output(storage: RenderStorage, uri: str | None, final: Path, sheet: Path) -> dict[str, object]:
    """Upload an s3:// output and its contact sheet; the metadata that links them (presigned, SigV4)."""
    if uri is None:
        return {
            "path": dg.MetadataValue.path(str(final)),
            "contact_sheet": dg.MetadataValue.path(str(sheet)),
        }
    client = storage.s3_client()
    sheet_uri = f"{uri.rpartition('.')[0] if '.' in uri.rpartition('/')[2] else uri}.contact{sheet.suffix}"
    upload_to_uri(client, final, uri)
    upload_to_uri(client, sheet, sheet_uri)
    sheet_url = presigned_url(sheet_uri, client)
    return {
        "path": dg.MetadataValue.text(uri),
        "url": dg.MetadataValue.url(presigned_url(uri, client)),
        "contact_sheet": dg.MetadataValue.text(sheet_uri),
        "contact_sheet_url": dg.MetadataValue.url(sheet_url),
    }


def _publish_poster(
    context: dg.AssetExecutionContext, storage: RenderStorage, uri: str | None, poster: Path
) -> dict[str, object]:
    """The poster beside the video (uploaded beside an s3:// output), and a preview of it that the UI shows."""
    links: dict[str, object] = {"poster_preview": preview_or_note(context, poster, FINAL_PREVIEW_CHARS)}
    if uri is None:
        return links | {"poster": dg.MetadataValue.path(str(poster))}
    client = storage.s3_client()
    poster_uri = f"{uri.rpartition('/')[0]}/{poster_path(Path(uri.rpartition('/')[2])).name}"
    upload_to_uri(client, poster, poster_uri)
    return links | {
        "poster": dg.MetadataValue.text(poster_uri),
        "poster_url": dg.MetadataValue.url(presigned_url(poster_uri, client)),
    }


@dg.asset_check(asset=mixed_video, description="ffprobe: duration = frames/fps, resolution, audio iff tracks")
def final_video_valid(context: dg.AssetCheckExecutionContext, storage: RenderStorage) -> dg.AssetCheckResult:
    render_key = context.partition_key
    plan = storage.plan_for(render_key)
    spec = plan.spec
    final = plan.final_output_file
    if plan.final_output_uri is not None and not final.is_file():  # checked on another machine than the mix
        download_from_uri(storage.s3_client(), plan.final_output_uri, final)
    info = probe(final)
    expected_duration = plan.total_frames / spec.fps
    problems = []
    if info.video_frames != plan.total_frames:
        problems.append(f"{info.video_frames} frames, expected {plan.total_frames}")
    if abs(info.duration - expected_duration) > 0.5 / spec.fps:
        problems.append(f"duration {info.duration:.4f} s, expected {expected_duration:.4f} s")
    if (info.width, info.height) != (spec.width, spec.height):
        problems.append(f"{info.width}x{info.height}, expected {spec.width}x{spec.height}")
    # audio is expected from the spec's tracks or from the page's own media (carried by the chunks)
    concat = _latest(context.instance, CONCAT_ASSET, render_key)
    concat_audio = concat.metadata.get("audio_codec") if concat else None
    wants_audio = bool(spec.audio_tracks) or (concat_audio is not None and concat_audio.value != "none")
    if (info.audio_codec is not None) != wants_audio:
        problems.append("audio stream present without any audio source" if info.audio_codec else "audio stream missing")
    cleaned: list[str] = []
    if not problems:  # the render is done: what only served it goes (HELIOS_KEEP_DAYS)
        cleaned = storage.finished(render_key)
    if plan.final_output_uri is not None:
        final.unlink(missing_ok=True)
        contact_sheet_path(final).unlink(missing_ok=True)
        poster_path(final).unlink(missing_ok=True)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "problems": dg.MetadataValue.text("; ".join(problems) or "none"),
            "duration_seconds": info.duration,
            "expected_duration_seconds": expected_duration,
            "frames": info.video_frames,
            "renders_cleaned_up": dg.MetadataValue.text(", ".join(cleaned) or "none"),
        },
    )
