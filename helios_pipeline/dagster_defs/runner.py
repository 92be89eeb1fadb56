"""Render through the Dagster deployment from the command line: submit, then follow the runs.

``submit`` registers a render in the instance (spec snapshot + partition); the deployment's
automation then runs plan -> chunks (one run each, in parallel under the run queue) -> concat ->
mixed video. ``render`` does the same and waits, showing progress; it starts a Dagster daemon for
the duration of the render when none is running, so the runs are the same ones ``dagster dev``
shows afterwards.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster._core.storage.dagster_run import RunsFilter

from helios_pipeline.dagster_defs.registry import register_spec
from helios_pipeline.dagster_defs.settings import PROJECT_ROOT, Settings
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.engine.errors import RenderCancelled, RenderError
from helios_pipeline.spec import RenderSpec

RENDERS = "renders"
DEFAULT_HOME = PROJECT_ROOT / ".dagster_home"
DAEMON_FRESH_SECONDS = 60
REQUIRED_DAEMONS = {"SENSOR", "QUEUED_RUN_COORDINATOR", "ASSET"}
POLL_SECONDS = 0.5


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
    """Register ``spec`` as a render and plan it; a running deployment renders it without further steps."""
    settings = Settings.from_env()
    storage = RenderStorage(base_dir=str(settings.storage))
    key, _spec = register_spec(storage, spec, settings.max_chunks, render_key, source)
    if not instance.has_dynamic_partition(RENDERS, key):
        instance.add_dynamic_partitions(RENDERS, [key])
    # plan now, in this process (a real run in the instance); automation renders the chunks as soon
    # as it sees the new plan, and a re-submitted spec with new content marks old chunks stale
    from helios_pipeline.dagster_defs.definitions import defs

    plan_job = defs.resolve_implicit_global_asset_job_def()
    result = plan_job.execute_in_process(
        instance=instance,
        partition_key=key,
        asset_selection=[dg.AssetKey("render_plan")],
        tags={"helios/render": key},
        raise_on_error=False,
    )
    if not result.success:
        failures = [event.message for event in result.all_events if event.is_step_failure]
        raise RenderError(f"planning render {key} failed: {'; '.join(str(f) for f in failures)}")
    return key


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
            [sys.executable, "-m", "dagster._daemon", "run", "-w", str(PROJECT_ROOT / "workspace.yaml")],
            cwd=PROJECT_ROOT,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        instance.wipe_daemon_heartbeats()  # our daemon is gone: the next render must not count on it


@dataclass
class RenderStatus:
    frames_done: int
    total_frames: int
    stage: str
    finished: bool = False
    output: str | None = None


def _frames_done(storage: RenderStorage, key: str) -> int:
    total = 0
    for progress in (storage.render_dir(key) / "progress").glob("*.json"):
        with contextlib.suppress(ValueError, OSError):
            total += int(json.loads(progress.read_text())["frames"])
    return total


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
) -> RenderStatus:
    """Wait for render ``key`` to finish (mixed_video materialised after ``since``); raise on a failed run."""
    storage = RenderStorage(base_dir=str(Settings.from_env().storage))
    total = storage.load_spec(key).total_frames
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
        active = [run for run in runs if not run.is_finished]
        stage = "rendering chunks" if any("dagster/partition/render" in r.tags for r in active) else "waiting"
        on_status(RenderStatus(min(_frames_done(storage, key), total), total, stage))
        if deadline is not None and time.monotonic() > deadline:
            raise RenderError(f"render {key} did not finish within {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


def cancel_render(instance: dg.DagsterInstance, key: str, since: float) -> None:
    """Terminate the render's queued and running runs."""
    for run in _render_runs(instance, key, since):
        if not run.is_finished:
            with contextlib.suppress(Exception):
                if run.status == dg.DagsterRunStatus.QUEUED:
                    instance.report_run_canceled(run)
                else:
                    instance.run_launcher.terminate(run.run_id)


def render_through_dagster(
    spec: RenderSpec, on_status: Callable[[RenderStatus], None], timeout: float | None = None, source: str = "spec"
) -> RenderStatus:
    """Submit and follow a render on this machine's Dagster instance (starting a daemon if needed)."""
    instance = get_instance()
    since = time.time()
    with ensure_daemon(instance):
        key = submit(spec, instance, source=source)
        try:
            return follow(instance, key, since, on_status, timeout)
        except KeyboardInterrupt:
            cancel_render(instance, key, since)
            raise RenderCancelled(f"render {key} cancelled") from None
