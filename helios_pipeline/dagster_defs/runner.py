"""Render through the Dagster deployment from the command line: submit, then follow the runs.

``submit`` registers a render in the instance (spec snapshot + partition), plans it, and hands the
rest to the deployment as a backfill; ``follow`` waits for the final video, showing progress;
``render_through_dagster`` does both, with a daemon of its own when none is running, so the runs
are the same ones the UI shows afterwards. The instance and daemon lifecycle is in ``instance``,
backfills in ``backfills``.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from helios_pipeline.dagster_defs import private_api
from helios_pipeline.dagster_defs.backfills import (
    cancel_backfill,
    cancel_render_backfill,
    launch_backfill,
    reexecute_backfill_from_failure,
    render_backfill,
    render_in_progress,
    utc,
    wait_for_backfill_end,
)
from helios_pipeline.dagster_defs.daemon import INTERRUPT_DAEMON_SECONDS
from helios_pipeline.dagster_defs.instance import (
    DAEMON_STOP_SECONDS,
    UNFINISHED_RUNS,
    RenderDaemon,
    daemon_running,
    dagster_home,
    ensure_daemon,
    get_instance,
    stop_process_tree,
)
from helios_pipeline.dagster_defs.names import (
    BACKFILL_PLAN_TAG,
    CHUNK_ASSET,
    CHUNK_PARTITION_TAG,
    MIXED_ASSET,
    PARTITION_TAG,
    PLAN_ASSET,
    PLAN_JOB,
    RENDER_PARTITION_TAG,
    RENDER_TAG,
    RENDERS,
)
from helios_pipeline.dagster_defs.pending import pending_work
from helios_pipeline.dagster_defs.registry import spec_for_render
from helios_pipeline.dagster_defs.run_tags import worker_run_tags
from helios_pipeline.dagster_defs.settings import Settings, storage_resource
from helios_pipeline.dagster_defs.stall import Stall, StallWatch, stall_seconds
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.engine.errors import RenderCancelled, RenderError
from helios_pipeline.interruptible import call_interruptibly, start_in_background
from helios_pipeline.network import REPORTED_URLS, describe_refusals
from helios_pipeline.plan import plan as make_plan
from helios_pipeline.spec import RenderSpec, sanitize_key
from helios_pipeline.storage import StorageError

__all__ = [  # what the CLI, the benchmarks and the tests use from here
    "RenderDaemon",
    "RenderStatus",
    "cancel_render",
    "cancel_submission",
    "daemon_running",
    "dagster_home",
    "ensure_daemon",
    "follow",
    "get_instance",
    "launch_backfill",
    "reexecute_backfill_from_failure",
    "render_through_dagster",
    "stop_process_tree",
    "submit",
]

POLL_SECONDS = 0.5
RENDERING_POLL_SECONDS = 1.0
"""How often ``follow`` looks while only chunk runs are going: the next stage is the daemon's to launch, so the
CLI's looks only show progress and failures; each look is four queries on the instance (~2 CPU-s per 20 s
render at 0.5 s on SQLite), which the chunks' Chromium and FFmpeg would otherwise have had."""
FINISHING_POLL_SECONDS = 0.2
"""How often ``follow`` looks while the final run (concat + mix) is running: it ends within seconds, and the
caller should hear of it at once."""
BACKFILL_CHECK_SECONDS = 2.0
"""How long ``follow`` goes without reading the render's backfill while none of its runs changed status."""
WILL_RETRY_TAG = "dagster/will_retry"
RETRY_DECISION_SECONDS = 5.0  # how long a FAILURE may go without Dagster's will_retry tag before it counts
CANCEL_WAIT_SECONDS = 30
BACKFILL_END_WAIT_SECONDS = 30  # a few backfill loops; the final video is already there
# A cancelled render (Ctrl-C, SIGTERM, SIGHUP) must be gone within a service manager's ~10 s grace:
INTERRUPT_RUNS_SECONDS = 4  # the deployment's terminated runs get this long to end, then are marked canceled
STARTING_SETTLE_SECONDS = 2.0  # how long an interrupted render's STARTING runs get to record their start
STARTING_POLL_SECONDS = 0.05
PLAN_FINISH_SECONDS = 1  # an interrupted plan run gets this long to record its end before the render is cancelled
# After a finished render our daemon's threads stop at once on SIGTERM; what follows is Dagster's code-server
# teardown (7 s on a loaded 2-core machine), with nothing left to save: the CLI does not wait for all of it
DONE_DAEMON_SECONDS = 2


class StoppedFollowing(RenderCancelled):
    """Interrupted while following a render that another submission started: it goes on, nothing was cancelled."""


@dataclass(frozen=True)
class Submission:
    key: str
    since: float
    """When the render's backfill was made: the render's runs are those created after."""
    joined: str | None = None
    """The backfill of the same render already in progress, which this submission follows instead of a new one."""


def submit(
    spec: RenderSpec, instance: dg.DagsterInstance, render_key: str | None = None, source: str = "spec"
) -> Submission:
    """Register ``spec`` as a render, plan it here, and hand the rest to the deployment as a backfill.

    The backfill targets the render's chunks (only those its plan uses), the concat and the mixed
    video, so the render shows in the UI's backfills with its progress and can be re-executed from
    failure like one launched there. It is created before the plan is materialised: automation
    leaves assets alone while a backfill targets them, so the chunks are never requested twice.
    A render submitted again leaves out what is already made for its pictures (``pending_work``):
    after an edit of its sound alone the backfill holds only the mix. Submitted again while its backfill is in
    progress, the same render is followed, not rendered twice (an overlapping job, a double submit); a changed one
    is refused, since its snapshot would change the render in flight.
    """
    settings = Settings.from_env()
    storage = storage_resource(settings)
    storage.store.check()  # a missing bucket or bad credentials fail here, before anything is registered
    since = time.time()
    prepared = spec_for_render(spec, render_key or spec.name, settings.max_chunks, source, instance)
    key = prepared.name
    running = render_in_progress(instance, key)
    if running is not None:
        if not storage.registered_as(key, prepared):
            raise RenderError(
                f"render {key} is in progress (backfill {running.backfill_id}) with another spec, which this one "
                f"would change mid-render: wait for it to end or cancel it, or give this render another name "
                f"(--set name=...)"
            )
        return Submission(key, running.backfill_timestamp, joined=running.backfill_id)
    storage.save_spec(key, prepared)
    pending = pending_work(instance, storage, key, make_plan(prepared, work_dir=storage.render_dir(key)))
    if not instance.has_dynamic_partition(RENDERS, key):
        instance.add_dynamic_partitions(RENDERS, [key])
    # container sizes for run launchers that honour them (ECS, Kubernetes); other launchers ignore the tags
    backfill_id = launch_backfill(
        instance,
        key,
        with_plan=False,
        chunks=pending.chunks,
        with_concat=pending.concat,
        tags=worker_run_tags(prepared),
    )
    # the plan asset, in this process (a run in the instance, without a run worker's start-up): its data
    # version (the picture fingerprint) is what marks a re-submitted render's old chunks stale; its tag
    # tells automation that what follows the plan is this backfill's
    from helios_pipeline.dagster_defs.definitions import defs

    plan_job = defs.resolve_implicit_global_asset_job_def()
    # off the main thread: on it, Dagster would hold back (or drop) a SIGTERM that arrives meanwhile
    result = call_interruptibly(
        lambda: plan_job.execute_in_process(
            instance=instance,
            partition_key=key,
            asset_selection=[PLAN_ASSET],
            tags={RENDER_TAG: key, BACKFILL_PLAN_TAG: backfill_id},
            raise_on_error=False,
            # the run's events go to the instance (and the UI) as always; the terminal shows the CLI's progress
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        ),
        PLAN_FINISH_SECONDS,
        name=f"plan {key}",
    )
    if not result.success:
        cancel_backfill(instance, backfill_id, daemon_alive=daemon_running(instance))
        failures = [event.message for event in result.all_events if event.is_step_failure]
        raise RenderError(f"planning render {key} failed: {'; '.join(str(f) for f in failures)}")
    return Submission(key, since)


@dataclass
class RenderStatus:
    frames_done: int
    total_frames: int
    stage: str
    finished: bool = False
    output: str | None = None
    blocked_note: str | None = None
    """A finished render whose pages the network policy refused requests: what and why (one line)."""
    waiting_for: Stall | None = None
    """A render that has not moved for a while: what it waits on (``stall``)."""


RETRY_WRAPPER = "RetryRequestedFromPolicy"  # "Exceeded max_retries of N": the step's own error is its cause
FAILURE_PREFIX = "dagster._core.definitions.events.Failure: "


def _step_error(failure: Any) -> str | None:
    """A step's own error: a ``dg.Failure``'s description, else the exception under Dagster's retry wrapper."""
    if failure.user_failure_data is not None and failure.user_failure_data.description:
        return failure.user_failure_data.description.strip()
    error = failure.error
    while error is not None and error.cls_name == RETRY_WRAPPER and error.cause is not None:
        error = error.cause
    if error is None:
        return None
    return error.message.strip().removeprefix(FAILURE_PREFIX)


def _failed_run_message(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """What failed in ``run``, in its own words; a chunk run's message starts with ``chunk NNN:``."""
    chunk = run.tags.get(CHUNK_PARTITION_TAG)
    for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = record.dagster_event
        if event and event.step_failure_data and (message := _step_error(event.step_failure_data)):
            return f"chunk {chunk}: {message}" if chunk else message
    return f"run {run.run_id} failed"


def _render_runs(instance: dg.DagsterInstance, key: str, since: float) -> list[dg.DagsterRun]:
    """The render's runs, chunk runs first, each kind oldest first: a failure is reported at its root."""
    chunk_runs = instance.get_runs(filters=dg.RunsFilter(tags={RENDER_PARTITION_TAG: key}, created_after=utc(since)))
    other_runs = instance.get_runs(filters=dg.RunsFilter(tags={PARTITION_TAG: key}, created_after=utc(since)))
    return [*reversed(chunk_runs), *reversed(other_runs)]


def _others_in_progress(instance: dg.DagsterInstance, key: str, since: float) -> bool:
    """Whether runs or backfills of other renders than ``key`` are in progress on the instance (they may rely on the
    daemon this CLI started: see ``RenderDaemon.hand_over``)."""
    mine = {run.run_id for run in _render_runs(instance, key, since)}
    if any(run.run_id not in mine for run in instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED_RUNS))):
        return True
    return any((backfill.tags or {}).get(RENDER_TAG) != key for backfill in private_api.backfills_in_progress(instance))


def follow(
    instance: dg.DagsterInstance,
    key: str,
    since: float,
    on_status: Callable[[RenderStatus], None],
    timeout: float | None = None,
    total_frames: int | None = None,
    watch: Callable[[], None] | None = None,
    stall: StallWatch | None = None,
) -> RenderStatus:
    """Wait for render ``key`` to finish (mixed_video materialised after ``since``); raise on a failed run.

    ``watch`` is called on every poll (the daemon check of ``render_through_dagster``). ``stall`` says why
    the render waits once it has not moved for a while (in the status, and in the error on ``timeout``);
    the caller reads its ``reason`` when it gives up for another cause (an interrupt).
    """
    stall = stall or StallWatch(instance)
    storage = storage_resource(Settings.from_env())
    total = total_frames or storage.load_spec(key).total_frames
    deadline = None if timeout is None else time.monotonic() + timeout
    failures_seen: dict[str, float] = {}
    statuses_seen: dict[str, dg.DagsterRunStatus] = {}
    backfill, backfill_read = None, float("-inf")
    while True:
        runs = _render_runs(instance, key, since)
        # only the concat + mix run (or automation's mix run) records the final video: until one exists there is
        # nothing to look up
        record = _final_video_record(instance, key, since) if _has_final_run(runs) else None
        if record is not None:
            # the final video exists; the render is done when its run (with the final check) has finished
            run = instance.get_run_by_id(record.run_id)
            if run is None or run.is_finished:
                if run is not None and run.status == dg.DagsterRunStatus.FAILURE:
                    raise RenderError(f"render {key}: {_failed_run_message(instance, run)}")
                metadata = record.asset_materialization.metadata if record.asset_materialization else {}
                path = metadata.get("path")
                status = RenderStatus(
                    total, total, "done", True, str(path.value) if path else None, blocked_note(instance, storage, key)
                )
                on_status(status)
                return status
        for run in runs:
            if run.status == dg.DagsterRunStatus.FAILURE and _fails_the_render(run, failures_seen):
                raise RenderError(f"render {key}: {_failed_run_message(instance, run)}")
        statuses = {run.run_id: run.status for run in runs}
        if statuses != statuses_seen or time.monotonic() - backfill_read >= BACKFILL_CHECK_SECONDS:
            statuses_seen, backfill_read = statuses, time.monotonic()
            backfill = render_backfill(instance, key, since)
        ended_badly = backfill is not None and backfill.status.value in ("FAILED", "CANCELED", "COMPLETED_FAILED")
        if ended_badly and record is None and not _final_video_recorded(instance, key, since):
            # the backfill saw a failure before it counted here (a retry decision pending): report the failure
            failed = next((run for run in runs if run.status == dg.DagsterRunStatus.FAILURE), None)
            if failed is not None:
                raise RenderError(f"render {key}: {_failed_run_message(instance, failed)}")
            raise RenderError(f"render {key}: its backfill {backfill.backfill_id} ended {backfill.status.value}")
        active = [run for run in runs if not run.is_finished]
        stage = "rendering chunks" if any(RENDER_PARTITION_TAG in r.tags for r in active) else "waiting"
        frames = min(_frames_done(storage, key), total)
        waiting_for = stall.observe(frames, runs)
        if waiting_for is not None:
            stage = f"waiting: {waiting_for.text}"
        on_status(RenderStatus(frames, total, stage, waiting_for=waiting_for))
        if watch is not None:
            watch()
        if deadline is not None and time.monotonic() > deadline:
            raise RenderError(f"render {key} did not finish within {timeout:.0f} s{waiting_clause(stall)}")
        time.sleep(_poll_seconds(active))


def _has_final_run(runs: list[dg.DagsterRun]) -> bool:
    """Whether one of the render's runs is neither a chunk run nor its plan: the concat + mix run, or a mix run of
    its own (only those record the final video: ``follow`` looks it up once one exists)."""
    return any(RENDER_PARTITION_TAG not in run.tags and not _is_plan_run(run) for run in runs)


def _is_plan_run(run: dg.DagsterRun) -> bool:
    """A render's plan run: the CLI's in-process one, a backfill's, or the plan job's (a schedule's)."""
    return run.job_name == PLAN_JOB or set(run.asset_selection or ()) == {PLAN_ASSET}


def _poll_seconds(active: list[dg.DagsterRun]) -> float:
    """How long ``follow`` waits before its next look, from what the render's unfinished runs are doing."""
    started = [run for run in active if run.status == dg.DagsterRunStatus.STARTED]
    if _has_final_run(started):
        return FINISHING_POLL_SECONDS
    if started and len(started) == len(active) and all(RENDER_PARTITION_TAG in run.tags for run in started):
        # chunks rendering, nothing queued or starting
        return RENDERING_POLL_SECONDS
    return POLL_SECONDS


def waiting_clause(stall: StallWatch) -> str:
    """``; it was waiting N s: <why>`` for a message on exit, or nothing when the render was moving."""
    if stall.reason is None:
        return ""
    return f"; it had not moved for {stall.stalled_seconds:.0f} s: {stall.reason.text}"


def blocked_note(instance: dg.DagsterInstance, storage: RenderStorage, key: str) -> str | None:
    """The network policy's refusals over the render's chunks (their latest materialisations), as one line."""
    try:
        chunk_ids = [chunk.id for chunk in storage.plan_for(key).chunks]
    except (StorageError, ValueError):
        return None
    partitions = [str(dg.MultiPartitionKey({"render": key, "chunk": f"{index:03d}"})) for index in chunk_ids]
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=CHUNK_ASSET, asset_partitions=partitions), limit=len(partitions) * 4
    ).records
    latest: dict[str, dict[str, dg.MetadataValue]] = {}
    for record in records:  # newest first
        materialization = record.asset_materialization
        if materialization is not None:
            latest.setdefault(str(materialization.partition), dict(materialization.metadata))
    count, urls, rules = 0, [], []
    for metadata in latest.values():
        if "blocked_requests" in metadata and int(metadata["blocked_requests"].value or 0):
            count += int(metadata["blocked_requests"].value or 0)
            urls += [url for url in metadata["blocked_urls"].value or [] if url not in urls]
            rules.append(str(metadata["blocked_rule"].value))
    return describe_refusals(count, urls[:REPORTED_URLS], rules[0]) if count else None


def _fails_the_render(run: dg.DagsterRun, failures_seen: dict[str, float]) -> bool:
    """A failed run ends the render unless Dagster retries it.

    Dagster marks a run FAILURE first and tags it ``dagster/will_retry`` a moment later (run
    retries), so a failure without the tag is only final once the tag has had time to appear.
    """
    will_retry = run.tags.get(WILL_RETRY_TAG)
    if will_retry is not None:
        return will_retry != "true"
    first_seen = failures_seen.setdefault(run.run_id, time.monotonic())
    return time.monotonic() - first_seen > RETRY_DECISION_SECONDS


def _final_video_record(instance: dg.DagsterInstance, key: str, since: float) -> dg.EventLogRecord | None:
    """The render's final video, when a run materialised it after ``since``."""
    filter_ = dg.AssetRecordsFilter(asset_key=MIXED_ASSET, asset_partitions=[key], after_timestamp=since)
    records = instance.fetch_materializations(filter_, limit=1).records
    return records[0] if records else None


def _final_video_recorded(instance: dg.DagsterInstance, key: str, since: float) -> bool:
    return _final_video_record(instance, key, since) is not None


def cancel_render(
    instance: dg.DagsterInstance, key: str, since: float, timeout: float = CANCEL_WAIT_SECONDS
) -> list[dg.DagsterRun]:
    """Terminate the render's queued and running runs and wait until every one of them has ended.

    A queued run is canceled outright; a started one is sent a termination request and ends
    CANCELED once its worker has stopped Chromium and FFmpeg. Runs that appear meanwhile (a run
    retry of a worker terminated while starting) are canceled as well. A run that has still not
    ended after ``timeout`` (a worker that is stuck or already gone) is marked canceled, so no run
    of the render is left looking alive. Returns the render's runs as they ended.

    A termination request goes to the run's code server over gRPC, which answers only when it has a
    thread free: a server busy launching a burst of queued runs (or stopped) held each request for
    Dagster's 60 s gRPC timeout, and a SIGTERMed CLI waited minutes. So requests are sent from
    background threads and only ``timeout`` bounds the wait (the run is marked CANCELING at once).
    """
    terminated: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        runs = _render_runs(instance, key, since)
        pending = [run for run in runs if not run.is_finished]
        if not pending:
            return runs
        if time.monotonic() >= deadline:
            break
        for run in pending:
            with contextlib.suppress(Exception):
                if _nothing_else_ends(run):
                    instance.report_run_canceled(run, message="canceled: the render was cancelled")
                elif run.run_id not in terminated:
                    terminated.add(run.run_id)
                    _request_termination(instance, run.run_id)
        time.sleep(POLL_SECONDS)
    for run in pending:
        with contextlib.suppress(Exception):
            instance.report_run_canceled(run, message=f"did not end within {timeout:.0f} s of its termination")
    return _render_runs(instance, key, since)


def let_starting_runs_start(instance: dg.DagsterInstance, key: str, since: float, timeout: float) -> None:
    """Before an interrupted render's runs are marked and its daemon's group stopped: cancel its queued runs, and
    give its STARTING runs up to ``timeout`` to record their start.

    A STARTING run's worker checks that the run is not canceled and then records its start, which sets the run
    STARTED whatever it was marked meanwhile; interrupted after that, a run no longer marked CANCELING ends
    FAILURE (and may be retried). Once started, it is marked CANCELING like the others and ends CANCELED. With
    runs launched the moment they are queued, a render interrupted early often has several runs starting.
    """
    deadline = time.monotonic() + timeout
    while True:
        runs = [run for run in _render_runs(instance, key, since) if not run.is_finished]
        for run in runs:
            if run.status in (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED):
                with contextlib.suppress(Exception):
                    instance.report_run_canceled(run, message="canceled: the render was cancelled")
        if time.monotonic() >= deadline or not any(run.status == dg.DagsterRunStatus.STARTING for run in runs):
            return
        time.sleep(STARTING_POLL_SECONDS)


def mark_render_canceling(instance: dg.DagsterInstance, key: str, since: float) -> None:
    """Mark the render's started runs CANCELING and cancel its queued and starting ones, asking no code server.

    For runs of our own daemon, whose process group is stopped right after: a run worker interrupted
    (SIGTERM) while its run is CANCELING ends the run CANCELED, after its step's own clean-up. Runs still
    STARTING were first given time to record their start (``let_starting_runs_start``); one that has not is
    canceled outright, so that its worker, if it has not yet checked, does not start it.
    """
    runs = [run for run in _render_runs(instance, key, since) if not run.is_finished]
    waiting = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING)
    for run in sorted(runs, key=lambda run: run.status in waiting):  # started runs first: their workers are next
        with contextlib.suppress(Exception):
            if run.status in waiting:
                instance.report_run_canceled(run, message="canceled: the render was cancelled")
            elif run.status != dg.DagsterRunStatus.CANCELING:
                instance.report_run_canceling(run, message="the render was cancelled: its daemon is being stopped")


def _nothing_else_ends(run: dg.DagsterRun) -> bool:
    """A run no worker will end: queued, or the plan run a CLI executes in its own process (``submit``), which
    an interrupted CLI stops waiting for."""
    waiting = run.status in (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED)
    return waiting or BACKFILL_PLAN_TAG in run.tags


def cancel_submission(instance: dg.DagsterInstance, key: str, since: float) -> None:
    """A ``submit`` interrupted half-way: its backfill launches nothing, and no run of it is left looking alive."""
    cancel_render_backfill(instance, key, since, daemon_alive=daemon_running(instance))
    cancel_render(instance, key, since, timeout=INTERRUPT_RUNS_SECONDS)


def _request_termination(instance: dg.DagsterInstance, run_id: str) -> None:
    """Ask the run launcher to terminate ``run_id`` without waiting for its code server to answer."""
    start_in_background(lambda: instance.run_launcher.terminate(run_id), name=f"terminate {run_id[:8]}")


def render_through_dagster(
    spec: RenderSpec,
    on_status: Callable[[RenderStatus], None],
    timeout: float | None = None,
    source: str = "spec",
    on_note: Callable[[str], None] | None = None,
    ahead: subprocess.Popen | None = None,
) -> RenderStatus:
    """Submit and follow a render on this machine's Dagster instance (starting a daemon if needed, or taking on
    the one the CLI started ahead, ``ahead``).

    The deployment's daemon is used while it keeps beating; when its heartbeats go stale (a UI
    or daemon stopped without wiping them) a daemon is started here and the render carries on;
    ``on_note`` is told why. Ctrl-C (and SIGTERM/SIGHUP, which the CLI turns into it) terminates
    the render's runs, marks what has not ended within a few seconds canceled, stops the daemon
    started here, then raises ``RenderCancelled``: the whole stop fits a service manager's 10 s
    grace whatever the render was waiting on. A failed render raises ``RenderError``; when the
    daemon is ours, its backfill and remaining runs are ended first, so nothing in the instance is
    left looking alive.
    """
    stalled_after = stall_seconds()  # a bad setting is said before anything is submitted
    instance = get_instance()
    since = time.time()
    failure: RenderError | None = None
    daemon = RenderDaemon(instance, on_note, ahead)
    stall = StallWatch(instance, daemon.problem, stalled_after)
    key = sanitize_key(spec.name)  # the key submit registers: an interrupt while submitting cancels it too
    interrupted = done = False
    joined: str | None = None
    try:
        try:
            daemon.start_unless_alive()
            submission = submit(spec, instance, source=source)
            key, since, joined = submission.key, min(since, submission.since), submission.joined
            if joined is not None and on_note is not None:
                on_note(
                    f"render {key} is already in progress (backfill {joined}): following it, not rendering it twice"
                )
            try:
                status = follow(
                    instance,
                    key,
                    since,
                    _noting_stalls(on_status, on_note),
                    timeout,
                    total_frames=spec.total_frames,
                    watch=daemon.check,
                    stall=stall,
                )
                if daemon.ours:  # let our daemon record the backfill as done before it stops
                    wait_for_backfill_end(instance, key, since, BACKFILL_END_WAIT_SECONDS)
                done = True
                return status
            except RenderError as exc:
                if not daemon.ours:
                    raise  # the deployment's daemon finishes the backfill (as failed) on its own
                failure = exc  # ours stops with us: end the render's backfill and runs first
                cancel_render_backfill(instance, key, since, daemon_alive=True)
                cancel_render(instance, key, since)
                wait_for_backfill_end(instance, key, since, BACKFILL_END_WAIT_SECONDS)
        except KeyboardInterrupt:  # while submitting, following, or ending a failed render
            interrupted = True
            # no launches from here on; runs get a few seconds to end, then count as canceled
            if joined is not None:  # another submission's render: it goes on, under its own CLI or the deployment
                pass
            elif daemon.ours and not _others_in_progress(instance, key, since):
                # its run workers end with its process group: no code server is asked
                let_starting_runs_start(instance, key, since, STARTING_SETTLE_SECONDS)
                mark_render_canceling(instance, key, since)  # first, so an interrupted run ends CANCELED
                daemon.begin_stop(INTERRUPT_DAEMON_SECONDS)  # the group shuts down while the instance is updated
                cancel_render_backfill(instance, key, since, daemon_alive=False)
            else:
                cancel_render_backfill(instance, key, since, daemon_alive=True)
                cancel_render(instance, key, since, timeout=INTERRUPT_RUNS_SECONDS)
    finally:
        # A run that was still STARTING when marked CANCELING records its start afterwards, which sets it back
        # to STARTED, and an interrupted STARTED run ends FAILURE (and may be retried): keep marking until
        # our daemon's group is gone.
        def remark() -> None:
            with contextlib.suppress(Exception):  # bookkeeping: a storage hiccup must not stop the stop
                mark_render_canceling(instance, key, since)

        if daemon.ours and _others_in_progress(instance, key, since):
            daemon.hand_over()  # other renders rely on it: it must not stop with their run workers
        daemon.stop(
            DONE_DAEMON_SECONDS if done else INTERRUPT_DAEMON_SECONDS if interrupted else DAEMON_STOP_SECONDS,
            while_waiting=remark if interrupted and daemon.ours else None,
        )
    if joined is not None and interrupted:
        raise StoppedFollowing(f"stopped following render {key}: it goes on (backfill {joined}, submitted before)")
    if daemon.ours and not daemon.handed_over:
        # our daemon is gone, so nothing can launch or run any more: a run it queued meanwhile is canceled
        # too, and a backfill it did not get to end is marked canceled
        cancel_render_backfill(instance, key, since, daemon_alive=False)
        cancel_render(instance, key, since, timeout=0)
    if failure is not None and not interrupted:
        raise failure
    raise RenderCancelled(f"render {key} cancelled{waiting_clause(stall)}")


def _noting_stalls(
    on_status: Callable[[RenderStatus], None], on_note: Callable[[str], None] | None
) -> Callable[[RenderStatus], None]:
    """``on_status`` that also notes why the render waits (a log or a quiet terminal has no progress line):
    once per kind of wait while it lasts, and not again for the same words after the render moved a bit."""
    kind_noted: list[str | None] = [None]
    last_text: list[str | None] = [None]

    def report(status: RenderStatus) -> None:
        waiting = status.waiting_for
        if waiting is None or waiting.kind == "launch":  # moving, or launching: no news
            kind_noted[0] = None
        elif waiting.kind != kind_noted[0]:
            kind_noted[0] = waiting.kind
            if waiting.text != last_text[0] and on_note is not None:
                on_note(f"the render is waiting: {waiting.text}")
            last_text[0] = waiting.text
        on_status(status)

    return report


def _frames_done(storage: RenderStorage, key: str) -> int:
    """Frames rendered so far, from the chunks' progress records (a storage hiccup shows as no progress)."""
    try:
        return storage.frames_done(key)
    except StorageError:
        return 0
