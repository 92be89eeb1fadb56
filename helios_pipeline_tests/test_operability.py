"""Operability on a bad day (issue 9): a UI that was just stopped, signals from service managers, a full disk.

Real processes throughout: `helios-pipeline ui` and `helios-pipeline render` as subprocesses, the
project's daemon, real chunk runs. A service manager (systemd, Docker, CI runners) stops a process
with SIGTERM and SIGKILLs it ~10 s later, so every stop here must be complete well inside 10 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil
import pytest
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._daemon.types import DaemonHeartbeat

from helios_pipeline.dagster_defs.instance import (
    DAEMON_FRESH_SECONDS,
    DAEMON_RESTARTS,
    REQUIRED_DAEMONS,
    RenderDaemon,
    daemon_running,
)
from helios_pipeline.dagster_defs.names import CHUNK_PARTITION_TAG, CHUNK_POOL, CONCAT_ASSET
from helios_pipeline.dagster_defs.stall import STALL_SECONDS, STALL_SETTING
from helios_pipeline.engine.errors import RenderError
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import frame_indices
from helios_pipeline_tests.helpers import (
    chunk_runs,
    deployment_env,
    deployment_processes,
    describe,
    nearly_full_volume,
    open_instance,
    render_runs,
    wait_for,
    write_instance_config,
    write_spec,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
GRACE_SECONDS = 10  # what systemd, Docker and CI runners give a process between SIGTERM and SIGKILL
RENDER_BOUND_SECONDS = 120  # a 30-frame render with a daemon start; "forever" before the fix


@dataclass
class Deployment:
    home: Path
    env: dict[str, str]
    instance: dg.DagsterInstance
    root: Path

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(encoding="utf-8", errors="replace")[-3000:]

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """``helios-pipeline ARGS`` in a session of its own, output to ``<name>.log``."""
        command = [sys.executable, "-m", "helios_pipeline.cli", *args]
        with (self.root / f"{name}.log").open("wb") as log:
            return subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def left(self) -> list[psutil.Process]:
        return deployment_processes(self.home)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    home, inbox = tmp_path / "home", tmp_path / "inbox"
    inbox.mkdir()
    write_instance_config(home)
    instance = open_instance(home)  # creates the sqlite storage before the CLI, UI and daemons open it
    try:
        yield Deployment(home, deployment_env(home, tmp_path / "storage", inbox), instance, tmp_path)
    finally:
        for process in deployment_processes(home):  # only if a test failed half-way
            with contextlib.suppress(psutil.Error):
                process.kill()
        instance.wipe_daemon_heartbeats()
        instance.dispose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ui(deployment: Deployment, port: int) -> subprocess.Popen:
    """`helios-pipeline ui`, once its daemon beats (every daemon the CLI checks) and its webserver answers."""
    process = deployment.start("ui", "ui", "--port", str(port))

    def up() -> bool:
        assert process.poll() is None, deployment.log("ui")
        beating = set(deployment.instance.get_daemon_heartbeats()) >= REQUIRED_DAEMONS
        with socket.socket() as probe:
            serving = probe.connect_ex(("127.0.0.1", port)) == 0
        return beating and serving

    wait_for(up, 120, "the UI's webserver and daemon", 0.5)
    return process


def seed_heartbeats(instance: dg.DagsterInstance, age: float) -> None:
    """Heartbeats of a daemon that is gone but looks alive (killed, or stopped without wiping them)."""
    for kind in (*REQUIRED_DAEMONS, "BACKFILL"):
        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - age, kind, "gone-daemon", errors=[]))


def render(deployment: Deployment, name: str, composition: Path, **fields: object) -> tuple[subprocess.Popen, Path]:
    spec = write_spec(deployment.root / "specs", name, composition, **fields)
    return deployment.start(name, "render", str(spec), "-q"), spec.parent / "out" / f"{name}.mp4"


def wait_ended(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def assert_nothing_left(deployment: Deployment, within: float = 5) -> None:
    deadline = time.monotonic() + within
    while deployment.left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not deployment.left(), describe(deployment.left())


# --- 1. closing the UI, then rendering from the CLI ---


def test_a_render_right_after_ctrl_c_on_the_ui_starts_its_own_daemon_and_finishes(deployment: Deployment) -> None:
    ui = start_ui(deployment, free_port())
    os.killpg(ui.pid, signal.SIGINT)  # Ctrl-C in the terminal running `helios-pipeline ui`
    assert wait_ended(ui, 60) == 0, deployment.log("ui")
    assert not deployment.instance.get_daemon_heartbeats(), "the UI's daemon is gone: its heartbeats must be too"

    process, video = render(deployment, "after-ui", COMPOSITIONS / "frame_raf", frame_count=30)
    code = wait_ended(process, RENDER_BOUND_SECONDS)

    assert code == 0, deployment.log("after-ui")
    assert frame_indices(video) == list(range(30))
    assert_nothing_left(deployment)


def test_a_render_relying_on_a_daemon_that_stopped_beating_starts_its_own_and_says_so(deployment: Deployment) -> None:
    # the UI (or a deployment's daemon) was killed without a chance to wipe its heartbeats: they still look fresh
    seed_heartbeats(deployment.instance, age=DAEMON_FRESH_SECONDS - 10)
    started = time.monotonic()
    process, video = render(deployment, "stale-beat", COMPOSITIONS / "frame_raf", frame_count=30)
    code = wait_ended(process, RENDER_BOUND_SECONDS)

    assert code == 0, deployment.log("stale-beat")
    assert "stopped heart-beating" in deployment.log("stale-beat")
    assert frame_indices(video) == list(range(30))
    assert time.monotonic() - started < RENDER_BOUND_SECONDS
    assert_nothing_left(deployment)


# --- 2. SIGTERM to `helios-pipeline ui` ---


def test_sigterm_to_the_ui_stops_its_webserver_and_daemon(deployment: Deployment) -> None:
    ui = start_ui(deployment, free_port())
    assert len(deployment.left()) >= 3, describe(deployment.left())  # the UI, its webserver, its daemon, ...
    signalled = time.monotonic()
    os.kill(ui.pid, signal.SIGTERM)  # to the UI process only, as `kill PID` or a service manager's main-PID stop
    assert wait_ended(ui, GRACE_SECONDS) == 0, deployment.log("ui")
    assert_nothing_left(deployment, within=max(0.0, GRACE_SECONDS - (time.monotonic() - signalled)))
    assert not deployment.instance.get_daemon_heartbeats()


# --- 3. SIGTERM to `helios-pipeline render`, in every state ---


def sigterm_and_time(process: subprocess.Popen) -> tuple[int, float]:
    signalled = time.monotonic()
    os.kill(process.pid, signal.SIGTERM)
    code = wait_ended(process, 3 * GRACE_SECONDS)
    seconds = time.monotonic() - signalled
    print(f"exit {code} {seconds:.1f} s after SIGTERM")  # the margin, shown with -s
    return code, seconds


@contextlib.contextmanager
def silent_code_server(folder: Path) -> Iterator[str]:
    """A Unix socket that takes gRPC connections and never answers: a code server too busy to reply."""
    path = folder / "silent.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen(64)  # connections wait in the backlog; no request is ever read
        yield str(path)


def test_sigterm_while_chunks_render_cancels_within_the_grace_period_even_with_a_code_server_that_does_not_answer(
    deployment: Deployment,
) -> None:
    """A run's termination is a gRPC request to its code server, answered when the server has a thread free:
    right after a daemon takeover the server was busy launching a burst of queued runs (launches timed out
    after 60 s), and the SIGTERMed CLI waited up to 60 s per running chunk. The runs' code server here is a
    socket that never answers (stopping the real one could freeze it holding the sqlite lock)."""
    instance = deployment.instance
    process, video = render(deployment, "term-busy", COMPOSITIONS / "slow", width=160, height=120, frame_count=300)

    def chunk_started() -> bool:
        assert process.poll() is None, deployment.log("term-busy")
        runs = chunk_runs(render_runs(instance, "term-busy")).values()
        return any(r.dagster_run.status == dg.DagsterRunStatus.STARTED for records in runs for r in records)

    wait_for(chunk_started, 240, "a chunk run to start", 0.2)  # a daemon start on a loaded machine
    with silent_code_server(deployment.root) as silent:
        for record in render_runs(instance, "term-busy"):
            instance.add_run_tags(record.dagster_run.run_id, {GRPC_INFO_TAG: json.dumps({"socket": silent})})
        code, seconds = sigterm_and_time(process)

    assert code == 130, deployment.log("term-busy")
    assert seconds < GRACE_SECONDS, f"exited {seconds:.1f} s after SIGTERM"
    assert "cancelled" in deployment.log("term-busy")
    assert_nothing_left(deployment, within=1)
    assert not video.exists()
    runs = [record.dagster_run for record in render_runs(instance, "term-busy")]
    chunks = [run for run in runs if CHUNK_PARTITION_TAG in run.tags]
    statuses = "; ".join(f"{run.run_id[:8]} {run.status.value} {sorted(run.tags)}" for run in runs)  # whole
    assert chunks and all(run.status == dg.DagsterRunStatus.CANCELED for run in chunks), statuses
    assert all(run.is_finished for run in runs), statuses
    backfills = instance.get_backfills()
    assert [b.status for b in backfills] == [BulkActionStatus.CANCELED]


@pytest.mark.parametrize("command", ["render", "submit"])
def test_sigterm_while_the_cli_plans_the_render_cancels_it(deployment: Deployment, command: str) -> None:
    """The plan runs in the CLI's process (``execute_in_process``), where Dagster holds SIGTERM back until its
    next checkpoint and drops it when there is none: the render failed ("planning failed", exit 1), went on
    as if no signal had come, or the CLI exited and left its backfill REQUESTED (a daemon would render it)."""
    instance = deployment.instance
    seed_heartbeats(instance, age=0)  # a live-looking daemon: the CLI starts none, nothing but the plan runs
    spec = write_spec(deployment.root / "specs", "term-plan", COMPOSITIONS / "frame_raf", frame_count=30)
    process = deployment.start("term-plan", command, str(spec), *(["-q"] if command == "render" else []))

    def planning() -> bool:
        assert process.poll() is None, deployment.log("term-plan")
        return any(not record.dagster_run.is_finished for record in render_runs(instance, "term-plan"))

    wait_for(planning, 60, "the plan run to start", 0.05)
    code, seconds = sigterm_and_time(process)

    assert code == 130, deployment.log("term-plan")
    assert seconds < GRACE_SECONDS, f"exited {seconds:.1f} s after SIGTERM"
    runs = [record.dagster_run for record in render_runs(instance, "term-plan")]
    assert runs and all(run.is_finished for run in runs), [(run.run_id, run.status) for run in runs]
    (backfill,) = instance.get_backfills()
    assert backfill.status in (BulkActionStatus.CANCELING, BulkActionStatus.CANCELED)
    assert "cancelled" in deployment.log("term-plan") and "failed" not in deployment.log("term-plan")
    assert_nothing_left(deployment, within=1)
    assert not (spec.parent / "out" / "term-plan.mp4").exists()


def test_a_render_waiting_in_the_queue_says_on_what_and_sigterm_cancels_it(deployment: Deployment) -> None:
    """No chunk slot: the render's chunk runs wait, one launched ahead of the pool (``op_granularity_run_buffer``)
    in its run, the others in the run queue. Within a bounded time the CLI says why (the pool and its size, as a
    note and on exit), and SIGTERM in that state cancels both."""
    instance = deployment.instance
    instance.event_log_storage.set_concurrency_slots(CHUNK_POOL, 0)
    deployment.env[STALL_SETTING] = "4"  # the CLI says why after 4 s standing still, not 15
    process, video = render(deployment, "term-queue", COMPOSITIONS / "frame_raf", frame_count=30)

    def explained() -> bool:
        assert process.poll() is None, deployment.log("term-queue")
        return "has 0 slots" in " ".join(deployment.log("term-queue").split())

    wait_for(explained, 240, "the CLI to say why the render waits", 0.5)  # a daemon start, then HELIOS_STALL_SECONDS
    statuses = sorted(record.dagster_run.status.value for record in chunk_runs_of(instance, "term-queue"))
    launched = [status for status in statuses if status != "QUEUED"]
    assert len(statuses) >= 2 and launched in (["STARTED"], ["STARTING"]), statuses  # one ahead of the pool
    code, seconds = sigterm_and_time(process)

    log = " ".join(deployment.log("term-queue").split())  # the terminal wraps long lines
    assert code == 130, log
    assert seconds < GRACE_SECONDS, f"exited {seconds:.1f} s after SIGTERM"
    stood_still = re.search(
        r"cancelled: render term-queue cancelled; it had not moved for (\d+) s: chunk .*has 0 slots", log
    )
    assert stood_still, log
    assert int(stood_still.group(1)) < STALL_SECONDS, "said after the default 15 s, not after HELIOS_STALL_SECONDS"
    runs = chunk_runs_of(instance, "term-queue")
    assert runs and all(r.dagster_run.status == dg.DagsterRunStatus.CANCELED for r in runs), [
        (r.dagster_run.run_id, r.dagster_run.status) for r in runs
    ]
    assert [b.status for b in instance.get_backfills()] == [BulkActionStatus.CANCELED]
    assert_nothing_left(deployment, within=1)
    assert not video.exists()


def chunk_runs_of(instance: dg.DagsterInstance, key: str) -> list[dg.RunRecord]:
    return [record for records in chunk_runs(render_runs(instance, key)).values() for record in records]


# --- 4. a full disk ---

FULL_DISK_BOUND_SECONDS = 240  # daemon start, two chunk runs that fail at once (a full disk is not retried), cancel


@pytest.fixture
def nearly_full_storage(deployment: Deployment) -> Iterator[Path]:
    """``HELIOS_STORAGE`` on a 4 MiB tmpfs with 16 KiB left: the spec, registration and plan fit, no chunk does."""
    with nearly_full_volume(Path(deployment.env["HELIOS_STORAGE"])) as storage:
        yield storage


def test_a_full_disk_is_reported_with_the_chunk_the_path_and_no_concat(
    deployment: Deployment, nearly_full_storage: Path
) -> None:
    instance = deployment.instance
    process, video = render(deployment, "full-disk", COMPOSITIONS / "frame_raf", frame_count=30, concurrency=2)
    code = wait_ended(process, FULL_DISK_BOUND_SECONDS)

    log = deployment.log("full-disk")
    assert code == 1, log
    # the chunk's own error: which chunk, ENOSPC, and the file on the full volume (not a downstream consequence)
    message = " ".join(log.split())  # the terminal wraps long lines
    assert re.search(
        rf"chunk 00[01]: .*no space left on device writing {re.escape(str(nearly_full_storage))}/", message
    ), log
    assert "not rendered" not in log and "max_retries" not in log, log
    runs = [record.dagster_run for record in render_runs(instance, "full-disk")]
    assert [run for run in runs if CONCAT_ASSET in (run.asset_selection or set())] == [], "a concat was launched"
    assert runs and all(run.is_finished for run in runs), [(run.run_id, run.status) for run in runs]
    assert_nothing_left(deployment)
    assert not video.exists()
    half_written = [path for path in nearly_full_storage.rglob("*") if path.name.startswith(".")]  # temporary names
    assert half_written == [], half_written


def test_one_late_daemon_thread_is_not_a_dead_daemon(tmp_path: Path) -> None:
    """On an overloaded machine one of the daemon's threads can beat late while the process lives: taking
    over then ran a second daemon that launched the same runs twice (seen in the ten-render load test)."""
    instance = dg.DagsterInstance.ephemeral(tempdir=str(tmp_path))
    try:
        seed_heartbeats(instance, age=5)
        late = sorted(REQUIRED_DAEMONS)[0]
        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - 3 * DAEMON_FRESH_SECONDS, late, "busy", errors=[]))
        assert daemon_running(instance), "a daemon whose other threads beat 5 s ago is alive"
        seed_heartbeats(instance, age=DAEMON_FRESH_SECONDS + 5)
        assert not daemon_running(instance), "a daemon none of whose threads beat within the bound is gone"
    finally:
        instance.dispose()


def test_the_daemon_started_ahead_is_kept_when_the_beats_the_cli_reads_may_be_its_own(tmp_path: Path) -> None:
    """The CLI's daemon started ahead reads the heartbeats itself and stands down if another daemon beats. On a
    loaded machine it beat before the CLI had imported Dagster, and the CLI, reading those beats, stopped it and
    waited on a daemon that was gone until its beat was 90 s old. The CLI keeps it: a stand-down is seen later."""
    instance = dg.DagsterInstance.ephemeral(tempdir=str(tmp_path))
    ahead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        seed_heartbeats(instance, age=1)  # as its own first beat would read
        daemon = RenderDaemon(instance, ahead=ahead)
        daemon.start_unless_alive()
        assert daemon.ours and daemon.process is ahead and ahead.poll() is None
    finally:
        ahead.kill()
        ahead.wait()
        instance.dispose()


def test_a_daemon_of_the_cli_that_exits_is_started_again_then_the_render_fails(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon a render started for itself, killed (OOM, a stray kill -9): the render used to wait forever."""
    for name, value in deployment.env.items():
        monkeypatch.setenv(name, value)
    notes: list[str] = []
    daemon = RenderDaemon(deployment.instance, notes.append)
    daemon.start_unless_alive()
    try:
        assert daemon.ours
        for restart in range(DAEMON_RESTARTS):
            killed = daemon.process
            assert killed is not None
            killed.kill()
            killed.wait()
            daemon.check()
            assert daemon.process is not None and daemon.process is not killed and daemon.process.poll() is None
            assert len(notes) == restart + 1 and f"(pid {killed.pid}) exited" in notes[-1], notes
        daemon.process.kill()
        daemon.process.wait()
        with pytest.raises(RenderError, match=r"helios-daemon\.log"):
            daemon.check()
    finally:
        daemon.stop(GRACE_SECONDS / 2)
    assert_nothing_left(deployment)
