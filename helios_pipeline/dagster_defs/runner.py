"""Render through the Dagster deployment from the command line: submit, then follow the runs.

``submit`` registers a render in the instance (spec snapshot + partition); the deployment's
automation then runs plan -> chunks (one run each, in parallel under the run queue) -> concat ->
mixed video. ``render`` does the same and waits, showing progress; it starts a Dagster daemon for
the duration of the render when none is running, so the runs are the same ones ``dagster dev``
shows afterwards.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
from dagster._core.storage.dagster_run import RunsFilter

from helios_pipeline.dagster_defs.daemon import daemon_command
from helios_pipeline.dagster_defs.registry import register_spec
from helios_pipeline.dagster_defs.run_tags import worker_run_tags
from helios_pipeline.dagster_defs.settings import PROJECT_ROOT, Settings, storage_resource
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.engine.errors import RenderCancelled, RenderError
from helios_pipeline.plan import plan as make_plan
from helios_pipeline.spec import RenderSpec
from helios_pipeline.storage import StorageError

RENDERS = "renders"
DEFAULT_HOME = PROJECT_ROOT / ".dagster_home"
DAEMON_FRESH_SECONDS = 60
REQUIRED_DAEMONS = {"SENSOR", "QUEUED_RUN_COORDINATOR", "ASSET"}
POLL_SECONDS = 0.5
DAEMON_STOP_SECONDS = 20
CANCEL_WAIT_SECONDS = 30
BACKFILL_END_WAIT_SECONDS = 30  # a few backfill loops; the final video is already there
BACKFILL_ASSETS = ("render_plan", "chunk_video", "concat_video", "mixed_video")


def dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to .dagster_home/ in the project with the repo's dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and (PROJECT_ROOT / "dagster.yaml").is_file():
        shutil.copy(PROJECT_ROOT / "dagster.yaml", config)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def get_instance() -> dg.DagsterInstance:
    dagster_home()
    return dg.DagsterInstance.get()


def submit(spec: RenderSpec, instance: dg.DagsterInstance, render_key: str | None = None, source: str = "spec") -> str:
    """Register ``spec`` as a render, plan it here, and hand the rest to the deployment as a backfill.

    The backfill targets the render's chunks (only those its plan uses), the concat and the mixed
    video, so the render shows in the UI's backfills with its progress and can be re-executed from
    failure like one launched there. It is created before the plan is materialised: automation
    leaves assets alone while a backfill targets them, so the chunks are never requested twice.
    """
    settings = Settings.from_env()
    storage = storage_resource(settings)
    storage.store.check()  # a missing bucket or bad credentials fail here, before anything is registered
    key, prepared = register_spec(storage, spec, settings.max_chunks, render_key, source)
    chunk_count = len(make_plan(prepared).chunks)
    if not instance.has_dynamic_partition(RENDERS, key):
        instance.add_dynamic_partitions(RENDERS, [key])
    # container sizes for run launchers that honour them (ECS, Kubernetes); other launchers ignore the tags
    backfill_id = launch_backfill(
        instance, key, with_plan=False, chunk_count=chunk_count, tags=worker_run_tags(prepared)
    )
    # the plan asset, in this process (a run in the instance, without a run worker's start-up): its data
    # version (the content fingerprint) is what marks a re-submitted render's old chunks stale
    from helios_pipeline.dagster_defs.definitions import defs

    plan_job = defs.resolve_implicit_global_asset_job_def()
    result = plan_job.execute_in_process(
        instance=instance,
        partition_key=key,
        asset_selection=[dg.AssetKey("render_plan")],
        tags={"helios/render": key},
        raise_on_error=False,
        # the run's events go to the instance (and the UI) as always; the terminal shows the CLI's progress
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    if not result.success:
        cancel_backfill(instance, backfill_id, daemon_alive=daemon_running(instance))
        failures = [event.message for event in result.all_events if event.is_step_failure]
        raise RenderError(f"planning render {key} failed: {'; '.join(str(f) for f in failures)}")
    return key


def render_backfill(instance: dg.DagsterInstance, key: str, since: float) -> Any | None:
    """The newest backfill of render ``key`` created after ``since`` (what ``submit`` launched)."""
    from dagster._core.execution.backfill import BulkActionsFilter

    backfills = instance.get_backfills(
        filters=BulkActionsFilter(tags={"helios/render": key}, created_after=_datetime(since)), limit=1
    )
    return backfills[0] if backfills else None


def cancel_backfill(instance: dg.DagsterInstance, backfill_id: str, daemon_alive: bool) -> None:
    """Stop a backfill from launching anything more: CANCELING for a live daemon, else CANCELED at once."""
    from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionStatus

    backfill = instance.get_backfill(backfill_id)
    if backfill is None or backfill.status in BULK_ACTION_TERMINAL_STATUSES:
        return
    status = BulkActionStatus.CANCELING if daemon_alive else BulkActionStatus.CANCELED
    instance.update_backfill(backfill.with_status(status))


def daemon_running(instance: dg.DagsterInstance) -> bool:
    heartbeats = instance.get_daemon_heartbeats()
    now = time.time()
    fresh = {kind for kind, beat in heartbeats.items() if now - beat.timestamp < DAEMON_FRESH_SECONDS}
    return fresh >= REQUIRED_DAEMONS


@contextlib.contextmanager
def ensure_daemon(instance: dg.DagsterInstance) -> Iterator[subprocess.Popen | None]:
    """Use the deployment's daemon when one is alive, else run one for the duration of the block."""
    if daemon_running(instance):
        yield None
        return
    log = Path(os.environ["DAGSTER_HOME"]) / "helios-daemon.log"
    with log.open("ab") as stream:
        process = subprocess.Popen(
            daemon_command("run", "-w", str(PROJECT_ROOT / "workspace.yaml")),
            cwd=PROJECT_ROOT,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process_tree(process)
        instance.wipe_daemon_heartbeats()  # our daemon is gone: the next render must not count on it


def stop_process_tree(process: subprocess.Popen, timeout: float = DAEMON_STOP_SECONDS) -> None:
    """Stop a daemon started in its own session and wait for everything it started to exit.

    SIGTERM goes to the daemon's process group (daemon, code server, run workers, FFmpeg); Chromium
    runs in a session of its own and exits with its Playwright driver. Whatever is still alive after
    ``timeout`` is killed, so a render never leaves processes behind (the code server outlives a
    SIGTERMed daemon for as long as a run is still executing in it).
    """
    try:
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        tree = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    for leftover in _alive(tree):
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # anything the group started after the snapshot
    process.wait()


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for candidate in processes:
        with contextlib.suppress(psutil.Error):
            if candidate.is_running() and candidate.status() != psutil.STATUS_ZOMBIE:
                alive.append(candidate)
    return alive


@dataclass
class RenderStatus:
    frames_done: int
    total_frames: int
    stage: str
    finished: bool = False
    output: str | None = None


def _failed_run_message(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = record.dagster_event
        if event and event.step_failure_data and event.step_failure_data.error:
            return event.step_failure_data.error.message.strip()
    return f"run {run.run_id} failed"


def _render_runs(instance: dg.DagsterInstance, key: str, since: float) -> list[dg.DagsterRun]:
    runs = []
    for tag in ({"dagster/partition/render": key}, {"dagster/partition": key}):
        runs += instance.get_runs(filters=RunsFilter(tags=tag, created_after=_datetime(since)))
    return runs


def _datetime(timestamp: float):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def follow(
    instance: dg.DagsterInstance,
    key: str,
    since: float,
    on_status: Callable[[RenderStatus], None],
    timeout: float | None = None,
    total_frames: int | None = None,
) -> RenderStatus:
    """Wait for render ``key`` to finish (mixed_video materialised after ``since``); raise on a failed run."""
    storage = storage_resource(Settings.from_env())
    total = total_frames or storage.load_spec(key).total_frames
    deadline = None if timeout is None else time.monotonic() + timeout
    mixed = dg.AssetKey("mixed_video")
    while True:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=mixed, asset_partitions=[key], after_timestamp=since), limit=1
        ).records
        if records:
            # the final video exists; the render is done when its run (with the final check) has finished
            run = instance.get_run_by_id(records[0].run_id)
            if run is None or run.is_finished:
                if run is not None and run.status == dg.DagsterRunStatus.FAILURE:
                    raise RenderError(f"render {key}: {_failed_run_message(instance, run)}")
                metadata = records[0].asset_materialization.metadata if records[0].asset_materialization else {}
                path = metadata.get("path")
                status = RenderStatus(total, total, "done", True, str(path.value) if path else None)
                on_status(status)
                return status
        runs = _render_runs(instance, key, since)
        for run in runs:
            if run.status == dg.DagsterRunStatus.FAILURE and run.tags.get("dagster/will_retry") != "true":
                raise RenderError(f"render {key}: {_failed_run_message(instance, run)}")
        backfill = render_backfill(instance, key, since)
        ended_badly = backfill is not None and backfill.status.value in ("FAILED", "CANCELED", "COMPLETED_FAILED")
        if ended_badly and not _final_video_recorded(instance, key, since):
            raise RenderError(f"render {key}: its backfill {backfill.backfill_id} ended {backfill.status.value}")
        active = [run for run in runs if not run.is_finished]
        stage = "rendering chunks" if any("dagster/partition/render" in r.tags for r in active) else "waiting"
        on_status(RenderStatus(min(_frames_done(storage, key), total), total, stage))
        if deadline is not None and time.monotonic() > deadline:
            raise RenderError(f"render {key} did not finish within {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


def _final_video_recorded(instance: dg.DagsterInstance, key: str, since: float) -> bool:
    filter_ = dg.AssetRecordsFilter(asset_key=dg.AssetKey("mixed_video"), asset_partitions=[key], after_timestamp=since)
    return bool(instance.fetch_materializations(filter_, limit=1).records)


def cancel_render(
    instance: dg.DagsterInstance, key: str, since: float, timeout: float = CANCEL_WAIT_SECONDS
) -> list[dg.DagsterRun]:
    """Terminate the render's queued and running runs and wait until every one of them has ended.

    A queued run is canceled outright; a started one is sent a termination request and ends
    CANCELED once its worker has stopped Chromium and FFmpeg. Runs that appear meanwhile (a run
    retry of a worker terminated while starting) are canceled as well. A run that has still not
    ended after ``timeout`` (a worker that is stuck or already gone) is marked canceled, so no run
    of the render is left looking alive. Returns the render's runs as they ended.
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
                if run.status in (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED):
                    instance.report_run_canceled(run, message="canceled: the render was cancelled")
                elif run.run_id not in terminated:
                    terminated.add(run.run_id)
                    instance.run_launcher.terminate(run.run_id)
        time.sleep(POLL_SECONDS)
    for run in pending:
        with contextlib.suppress(Exception):
            instance.report_run_canceled(run, message=f"did not end within {timeout:.0f} s of its termination")
    return _render_runs(instance, key, since)


def render_through_dagster(
    spec: RenderSpec, on_status: Callable[[RenderStatus], None], timeout: float | None = None, source: str = "spec"
) -> RenderStatus:
    """Submit and follow a render on this machine's Dagster instance (starting a daemon if needed).

    Ctrl-C terminates the render's runs and waits for them to end before the daemon started
    here is stopped, then raises ``RenderCancelled``. A failed render raises ``RenderError``; when
    the daemon is ours, its backfill and remaining runs are ended first, so nothing in the instance
    is left looking alive.
    """
    instance = get_instance()
    since = time.time()
    failure: RenderError | None = None
    with ensure_daemon(instance) as own_daemon:
        key = submit(spec, instance, source=source)
        try:
            status = follow(instance, key, since, on_status, timeout, total_frames=spec.total_frames)
            if own_daemon is not None:  # let our daemon record the backfill as done before it stops
                _wait_for_backfill_end(instance, key, since, BACKFILL_END_WAIT_SECONDS)
            return status
        except RenderError as exc:
            if own_daemon is None:
                raise  # the deployment's daemon finishes the backfill (as failed) on its own
            failure = exc  # ours stops with us: end the render's backfill and runs first
        except KeyboardInterrupt:
            pass
        _cancel_submitted(instance, key, since, daemon_alive=True)
        cancel_render(instance, key, since)
        if own_daemon is not None:
            _wait_for_backfill_end(instance, key, since, BACKFILL_END_WAIT_SECONDS)
    if own_daemon is not None:
        # our daemon is gone, so nothing can launch or run any more: a run it queued meanwhile is canceled
        # too, and a backfill it did not get to end is marked canceled
        _cancel_submitted(instance, key, since, daemon_alive=False)
        cancel_render(instance, key, since, timeout=0)
    if failure is not None:
        raise failure
    raise RenderCancelled(f"render {key} cancelled")


def _wait_for_backfill_end(instance: dg.DagsterInstance, key: str, since: float, timeout: float) -> None:
    from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        backfill = render_backfill(instance, key, since)
        if backfill is None or backfill.status in BULK_ACTION_TERMINAL_STATUSES:
            return
        time.sleep(POLL_SECONDS)


def _cancel_submitted(instance: dg.DagsterInstance, key: str, since: float, daemon_alive: bool) -> None:
    backfill = render_backfill(instance, key, since)
    if backfill is not None:
        cancel_backfill(instance, backfill.backfill_id, daemon_alive)


# --- backfills (what the UI launches) -------------------------------------------------------------
# PartitionBackfill and AssetBackfillData are internal Dagster API (pinned to 1.13.27): they are
# used here and nowhere else.


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
) -> str:
    """Submit an asset backfill of one registered render and return its id.

    The backfill targets the render's plan, every chunk partition of the render, the concat and
    the mixed video: what a user selects in the UI. The daemon then runs the plan, one run per
    chunk under the run queue, and concat + mix together once all chunks exist. ``with_plan=False``
    leaves the plan out (chunks read the registered spec, not the plan asset), which saves a run
    and a daemon loop before the chunks start; ``chunk_count`` then limits the backfill to the
    chunks the render's plan uses (the concat waits only for parents inside the backfill).

    ``asset_graph`` must be the deployment's (for example ``WorkspaceRequestContext.asset_graph``
    of a workspace loaded with the deployment's environment); by default it is this process's
    definitions, which is right when this process has the deployment's HELIOS_MAX_CHUNKS.
    """
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    if not instance.has_dynamic_partition(RENDERS, render_key):
        raise ValueError(f"render {render_key!r} is not registered (no such `{RENDERS}` partition)")
    graph = _asset_graph(asset_graph)
    if with_plan:  # the plan partition is the backfill's root; everything below it follows
        assets, partitions = BACKFILL_ASSETS, [render_key]
    else:  # the render's chunk partitions are the root
        chunk_dimension = graph.get(dg.AssetKey("chunk_video")).partitions_def.get_partitions_def_for_dimension("chunk")
        assets = BACKFILL_ASSETS[1:]
        partitions = [
            str(dg.MultiPartitionKey({"render": render_key, "chunk": chunk}))
            for chunk in chunk_dimension.get_partition_keys()[:chunk_count]
        ]
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=graph,
        partition_names=partitions,
        asset_selection=[dg.AssetKey(name) for name in assets],
        backfill_timestamp=time.time(),
        tags={"helios/render": render_key, **(tags or {})},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=f"render {render_key}",
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


def reexecute_backfill_from_failure(
    instance: dg.DagsterInstance, backfill_id: str, asset_graph: Any | None = None
) -> str:
    """Re-execute a finished asset backfill from failure and return the new backfill's id.

    The UI's "Re-execute backfill → from failure" (GraphQL ``reexecutePartitionBackfill`` with
    ``FROM_FAILURE``): a new backfill of the target minus what the backfill materialised, so
    finished chunks are reused and only the failed ones (and what depends on them) run again.
    """
    from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, PartitionBackfill
    from dagster._core.storage.tags import PARENT_BACKFILL_ID_TAG, ROOT_BACKFILL_ID_TAG
    from dagster._core.utils import make_new_backfill_id

    backfill = instance.get_backfill(backfill_id)
    if backfill is None or not backfill.is_asset_backfill:
        raise ValueError(f"no asset backfill {backfill_id!r} in this instance")
    if backfill.status not in BULK_ACTION_TERMINAL_STATUSES:
        raise ValueError(f"backfill {backfill_id} is still {backfill.status.value}; re-execute it once it has ended")
    data = backfill.get_asset_backfill_data(_asset_graph(asset_graph))
    remaining = data.target_subset - data.materialized_subset
    if remaining.num_partitions_and_non_partitioned_assets == 0:
        raise ValueError(f"backfill {backfill_id} has nothing left to materialise")
    new_backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id=make_new_backfill_id(),
        asset_graph_subset=remaining,
        dynamic_partitions_store=instance,
        tags={
            **backfill.tags,
            PARENT_BACKFILL_ID_TAG: backfill.backfill_id,
            ROOT_BACKFILL_ID_TAG: backfill.tags.get(ROOT_BACKFILL_ID_TAG, backfill.backfill_id),
        },
        backfill_timestamp=time.time(),
        title=f"Re-execution of {backfill.title}" if backfill.title else None,
        description=backfill.description,
        run_config=backfill.run_config,
    )
    instance.add_backfill(new_backfill)
    return new_backfill.backfill_id


def _frames_done(storage: RenderStorage, key: str) -> int:
    """Frames rendered so far, from the chunks' progress records (a storage hiccup shows as no progress)."""
    try:
        return storage.frames_done(key)
    except StorageError:
        return 0
