"""The render assets: plan -> chunk (render x chunk) -> concat -> mixed video.

Each asset calls one engine function and records what it measured as numeric metadata, so
the UI can plot timings across partitions. Retries, parallelism and failure propagation are
Dagster's: a chunk is a partition, each partition its own run.
"""

import json
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import dagster as dg

from helios_pipeline.dagster_defs.registry import register_spec_file
from helios_pipeline.dagster_defs.settings import Settings, chunk_keys
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.engine.chunk import render_chunk
from helios_pipeline.engine.concat import concat_chunks
from helios_pipeline.engine.contact_sheet import contact_sheet_path, write_contact_sheet
from helios_pipeline.engine.errors import PageError, RenderError
from helios_pipeline.engine.fileio import atomic_output
from helios_pipeline.engine.fingerprint import ENGINE_VERSION, render_fingerprint
from helios_pipeline.engine.mix import mix_final
from helios_pipeline.engine.probe import count_video_frames, probe
from helios_pipeline.spec import SpecError

SETTINGS = Settings.from_env()
GROUP = "helios"
CHUNK_POOL = "helios_chunks"

renders = dg.DynamicPartitionsDefinition(name="renders")
chunk_partitions = dg.MultiPartitionsDefinition(
    {"render": renders, "chunk": dg.StaticPartitionsDefinition(chunk_keys(SETTINGS.max_chunks))}
)
CHUNK_RETRY = dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
PROGRESS_INTERVAL_S = 0.5
CHUNK_ASSET = dg.AssetKey("chunk_video")
DATA_VERSION_TAG = "dagster/data_version"


def _fail(exc: Exception, *, retryable: bool) -> dg.Failure:
    return dg.Failure(description=str(exc), allow_retries=retryable)


# A terminated run (UI "Terminate", the CLI's Ctrl-C) interrupts its step. Dagster retries an interrupted
# step that has a RetryPolicy, which rendered a terminated chunk all over again and ended its run in SUCCESS;
# and an interrupt inside Playwright can surface as some other error. Once the run is being terminated, a
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
STAGE_CONDITION = (
    (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()).since(
        dg.AutomationCondition.newly_requested()
        | dg.AutomationCondition.newly_updated()
        | dg.AutomationCondition.in_progress()
    )
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("render when its inputs are ready")


@dg.asset(
    partitions_def=renders,
    group_name=GROUP,
    code_version=ENGINE_VERSION,
    description="The render's plan: frame ranges per chunk, files, mix. Its data version is the content "
    "fingerprint of spec + composition, so a changed composition marks the chunks stale.",
)
def render_plan(context: dg.AssetExecutionContext, storage: RenderStorage) -> dg.MaterializeResult:
    key = context.partition_key
    try:
        if not storage.has_spec(key):
            _register_from_inbox(key, storage)
        plan = storage.plan_for(key)
    except (SpecError, ValueError) as exc:
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
    spec = plan.spec
    fingerprint = render_fingerprint(spec)
    _report_unused_chunks(context, key, len(plan.chunks), fingerprint)
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
            "fingerprint": dg.MetadataValue.text(fingerprint),
            "plan": dg.MetadataValue.path(str(plan_file)),
            "output": dg.MetadataValue.path(str(plan.final_output_file)),
        },
        data_version=dg.DataVersion(fingerprint),
    )


def _register_from_inbox(key: str, storage: RenderStorage) -> None:
    """A partition added by hand in the UI: take the inbox spec of the same name, if there is one."""
    for suffix in (".yaml", ".yml", ".json"):
        candidate = SETTINGS.inbox / f"{key}{suffix}"
        if candidate.is_file():
            register_spec_file(storage, candidate, SETTINGS.max_chunks, key)
            return


def _report_unused_chunks(context: dg.AssetExecutionContext, key: str, used: int, fingerprint: str) -> None:
    """Chunk partitions beyond the plan are recorded as empty right away, so no run is spent on them."""
    for index in range(used, SETTINGS.max_chunks):
        context.instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=CHUNK_ASSET,
                partition=dg.MultiPartitionKey({"render": key, "chunk": f"{index:03d}"}),
                metadata={"skipped": True, "frames": 0, "reason": f"the plan has {used} chunks"},
                tags={DATA_VERSION_TAG: f"{fingerprint}-none"},
            )
        )


@dg.asset(
    partitions_def=chunk_partitions,
    deps=[render_plan],
    group_name=GROUP,
    code_version=ENGINE_VERSION,
    pool=CHUNK_POOL,
    retry_policy=CHUNK_RETRY,
    automation_condition=STAGE_CONDITION,
    description="One chunk of a render: a frame range rendered in its own Chromium into a closed-GOP file. "
    "Chunk indices beyond the render's plan materialise as empty (skipped) partitions.",
)
def chunk_video(context: dg.AssetExecutionContext, storage: RenderStorage) -> dg.MaterializeResult:
    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    render_key, index = keys["render"], int(keys["chunk"])
    if _run_terminating(context):  # a retry of a step interrupted before it got to the render below
        raise _terminated(render_key, index)
    try:
        plan = storage.plan_for(render_key)
    except (SpecError, ValueError) as exc:
        raise _fail(exc, retryable=False) from None
    fingerprint = render_fingerprint(plan.spec)
    if index >= len(plan.chunks):
        return dg.MaterializeResult(
            metadata={"skipped": True, "frames": 0, "reason": f"the plan has {len(plan.chunks)} chunks"},
            data_version=dg.DataVersion(f"{fingerprint}-none"),
        )
    chunk = plan.chunks[index]
    progress_file = storage.render_dir(render_key) / "progress" / f"{index:03d}.json"
    progress_file.parent.mkdir(parents=True, exist_ok=True)
    last_write = [0.0]

    def on_progress(frames: int) -> None:
        now = time.monotonic()
        if frames == chunk.frame_count or now - last_write[0] >= PROGRESS_INTERVAL_S:
            last_write[0] = now
            progress_file.write_text(json.dumps({"frames": frames, "of": chunk.frame_count}))

    context.log.info(f"rendering frames {chunk.start_frame}..{chunk.end_frame - 1} of {render_key}")
    try:
        result = render_chunk(plan.spec, chunk, on_progress=on_progress)
    except PageError as exc:  # the page itself is broken: retrying cannot help
        raise _fail(exc, retryable=False) from None
    except BaseException as exc:
        if isinstance(exc, INTERRUPTS) or _run_terminating(context):
            raise _terminated(render_key, index) from None
        if isinstance(exc, RenderError):  # browser crash, FFmpeg failure, load error: worth a retry
            raise _fail(exc, retryable=True) from None
        raise
    return dg.MaterializeResult(
        metadata={
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
            "worker_host": dg.MetadataValue.text(result.host),
            "worker_pid": result.pid,
            "path": dg.MetadataValue.path(result.output_file),
        },
        data_version=dg.DataVersion(f"{fingerprint}-{chunk.start_frame}-{chunk.frame_count}"),
    )


CHUNKS_COMPLETE = "chunks_complete"
with warnings.catch_warnings():  # beta, but the mapping the UI, backfills and automation all honour
    warnings.simplefilter("ignore", dg.BetaWarning)
    ALL_CHUNKS_OF_RENDER = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="render")


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
    missing = [f"{chunk.id:03d}" for chunk in plan.chunks if not Path(chunk.output_file).is_file()]
    if missing:
        yield dg.AssetCheckResult(
            check_name=CHUNKS_COMPLETE,
            passed=False,
            metadata={"missing_chunks": dg.MetadataValue.text(", ".join(missing)), "expected": len(plan.chunks)},
        )
        raise dg.Failure(
            description=f"render {render_key}: chunks {', '.join(missing)} are not rendered; "
            "materialise them before the concat (a short video is never produced)",
            allow_retries=False,
        )
    try:
        result = concat_chunks(
            list(plan.concat_manifest), plan.concat_output_file, fps=plan.spec.fps, expected_frames=plan.total_frames
        )
    except RenderError as exc:
        raise _fail(exc, retryable=False) from None
    frames = count_video_frames(plan.concat_output_file)
    info = probe(plan.concat_output_file)
    yield dg.MaterializeResult(
        metadata={
            "seconds": result.seconds,
            "bytes": result.bytes,
            "frames": frames,
            "chunks": result.chunks,
            "duration_seconds": frames / plan.spec.fps,
            "video_codec": dg.MetadataValue.text(info.video_codec),
            "audio_codec": dg.MetadataValue.text(info.audio_codec or "none"),
            "path": dg.MetadataValue.path(result.output_file),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CHUNKS_COMPLETE,
                passed=frames == plan.total_frames,
                metadata={"frames": frames, "expected_frames": plan.total_frames},
            )
        ],
    )


@dg.asset(
    partitions_def=renders,
    deps=[concat_video],
    group_name=GROUP,
    code_version=ENGINE_VERSION,
    automation_condition=STAGE_CONDITION,
    description="The finished video: the concat with every audio track mixed once; a contact sheet beside it.",
)
def mixed_video(context: dg.AssetExecutionContext, storage: RenderStorage) -> dg.MaterializeResult:
    render_key = context.partition_key
    plan = storage.plan_for(render_key)
    try:
        # the mix stream-copies the concat's video, so the contact sheet reads the concat meanwhile
        with ThreadPoolExecutor(max_workers=1) as pool:
            sheet_job = pool.submit(write_contact_sheet, plan.final_output_file, frames_from=plan.concat_output_file)
            try:
                mix = mix_final(plan.mix_options, plan.concat_output_file, plan.final_output_file)
            except BaseException:
                wait([sheet_job])
                contact_sheet_path(plan.final_output_file).unlink(missing_ok=True)  # no sheet without its video
                raise
            sheet = sheet_job.result()
    except RenderError as exc:
        raise _fail(exc, retryable=False) from None
    info = probe(plan.final_output_file)
    return dg.MaterializeResult(
        metadata={
            "seconds": mix.seconds,
            "bytes": mix.bytes,
            "duration_seconds": info.duration,
            "frames": info.video_frames,
            "width": info.width,
            "height": info.height,
            "video_codec": dg.MetadataValue.text(info.video_codec),
            "audio_codec": dg.MetadataValue.text(info.audio_codec or "none"),
            "audio_tracks": mix.audio_tracks,
            "path": dg.MetadataValue.path(str(plan.final_output_file)),
            "contact_sheet": dg.MetadataValue.path(str(sheet)),
            "preview": dg.MetadataValue.md(f"![contact sheet]({sheet.as_uri()})"),
        },
        data_version=dg.DataVersion(render_fingerprint(plan.spec)),
    )


@dg.asset_check(asset=mixed_video, description="ffprobe: duration = frames/fps, resolution, audio iff tracks")
def final_video_valid(context: dg.AssetCheckExecutionContext, storage: RenderStorage) -> dg.AssetCheckResult:
    render_key = context.partition_key
    plan = storage.plan_for(render_key)
    spec = plan.spec
    info = probe(plan.final_output_file)
    expected_duration = plan.total_frames / spec.fps
    problems = []
    if info.video_frames != plan.total_frames:
        problems.append(f"{info.video_frames} frames, expected {plan.total_frames}")
    if abs(info.duration - expected_duration) > 0.5 / spec.fps:
        problems.append(f"duration {info.duration:.4f} s, expected {expected_duration:.4f} s")
    if (info.width, info.height) != (spec.width, spec.height):
        problems.append(f"{info.width}x{info.height}, expected {spec.width}x{spec.height}")
    # audio is expected from the spec's tracks or from the page's own media (carried by the chunks)
    wants_audio = bool(spec.audio_tracks) or probe(plan.concat_output_file).audio_codec is not None
    if (info.audio_codec is not None) != wants_audio:
        problems.append("audio stream present without any audio source" if info.audio_codec else "audio stream missing")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "problems": dg.MetadataValue.text("; ".join(problems) or "none"),
            "duration_seconds": info.duration,
            "expected_duration_seconds": expected_duration,
            "frames": info.video_frames,
        },
    )
