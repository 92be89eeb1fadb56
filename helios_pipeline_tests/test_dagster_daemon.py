"""The Dagster deployment end to end: a real daemon, real backfills, the CLI through Dagster, Ctrl-C.

Everything is real: a temporary DAGSTER_HOME with the repo's dagster.yaml (run queue, pools, run
retries), the project's daemon (``python -m helios_pipeline.dagster_defs.daemon run -w
workspace.yaml``: Dagster's daemon with a 1 s backfill loop) as a subprocess, one run process per
chunk, Chromium and FFmpeg. Renders are tiny (128x128, 45-60 frames); the two backfill renders
share one daemon and run side by side.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import pytest
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionsFilter, BulkActionStatus
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

from helios_pipeline.dagster_defs.daemon import HANDOVER_SUFFIX
from helios_pipeline.dagster_defs.own_daemon import LOG_NAME as DAEMON_LOG_NAME
from helios_pipeline.dagster_defs.registry import register_spec_file
from helios_pipeline.dagster_defs.runner import (
    launch_backfill,
    reexecute_backfill_from_failure,
)
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.dagster_defs.timeline import critical_path, time_of
from helios_pipeline.dagster_defs.timeline import render_runs as timeline_runs
from helios_pipeline.dagster_defs.warm_launcher import PID_TAG as RUN_WORKER_PID_TAG
from helios_pipeline.dagster_defs.warm_launcher import RUN_WORKER_TITLE
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import frame_indices
from helios_pipeline_tests.helpers import (
    CHUNK,
    DEPLOYMENT_MAX_CHUNKS,
    Gate,
    automation_ticks_since,
    backfill_runs,
    busy_composition,
    chunk_runs,
    deployment_env,
    deployment_processes,
    describe,
    final_video,
    frame_index_page,
    gated_composition,
    latest_metadata,
    open_instance,
    render_runs,
    running_daemon,
    wait_for,
    write_instance_config,
    write_spec,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MAX_CHUNKS = DEPLOYMENT_MAX_CHUNKS
RENDERS = "renders"
PLAN = dg.AssetKey("render_plan")
CONCAT = dg.AssetKey("concat_video")
MIXED = dg.AssetKey("mixed_video")
# plan, chunks, concat + mix: three runs one after another (~30 s on an idle 2-core machine); the rest is
# slack for a loaded CI machine.
BACKFILL_TIMEOUT_S = 240
FINAL_RUN_START_BOUND_S = 20
"""From the last chunk's materialisation to the final run's start: ~3 s on a quiet 2-core machine, 25 s with a
cold run worker on one loaded by other test suites (load average 20); generous, for CI's machine."""
FAILED = (BulkActionStatus.COMPLETED_FAILED, BulkActionStatus.FAILED)
ENDED_RUN = {dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE}


# --- deployment plumbing --------------------------------------------------------------------------


def wait_for_backfill(instance: dg.DagsterInstance, backfill_id: str, timeout: float = BACKFILL_TIMEOUT_S):
    def ended() -> BulkActionStatus | None:
        backfill = instance.get_backfill(backfill_id)
        assert backfill is not None
        return backfill.status if backfill.status in BULK_ACTION_TERMINAL_STATUSES else None

    return wait_for(ended, timeout, f"backfill {backfill_id} to end")


def render_backfills(instance: dg.DagsterInstance, render_key: str) -> list[Any]:
    return list(instance.get_backfills(filters=BulkActionsFilter(tags={"helios/render": render_key})))


def materialization_count(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> int:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=100
    ).records
    return len(records)


def chunk_partition(render_key: str, chunk: str) -> str:
    return str(dg.MultiPartitionKey({"render": render_key, "chunk": chunk}))


def check_results(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, bool]:
    results = {}
    for run_id in run_ids:
        for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            data = event.dagster_event.event_specific_data
            results[data.check_name] = data.passed
    return results


def failing_composition(folder: Path) -> Path:
    """frame_raf, throwing from rAF on frames 20..39: chunk 001 of a 60-frame, 3-chunk render.

    ``throws_late`` throws for every frame from 20 on (a chunk seeks straight to its first frame),
    so chunk 002 would fail too, and it paints no frame index; this page fails only chunk 001 and
    becomes a frame-index page again when fixed.
    """
    return frame_index_page(folder, 'if (frame >= 20 && frame < 40) throw new Error("boom in chunk 001");')


@contextlib.contextmanager
def deployment_workspace(instance: dg.DagsterInstance, env: dict[str, str]) -> Iterator[Any]:
    """The repo's workspace loaded the way the UI loads it (a code server with the deployment's env)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("DAGSTER_HOME", "HELIOS_STORAGE", "HELIOS_INBOX", "HELIOS_MAX_CHUNKS"):
            patch.setenv(name, env[name])
        patch.chdir(REPO)
        context = WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(REPO / "workspace.yaml")]))
    with context:
        request_context = context.create_request_context()
        assert not request_context.code_location_errors(), request_context.code_location_errors()
        yield request_context


# --- backfills on a running daemon ----------------------------------------------------------------


@dataclass
class Deployment:
    instance: dg.DagsterInstance
    storage: RenderStorage
    asset_graph: Any
    backfills: dict[str, str]  # render key -> backfill id
    failing_composition: Path


EXACT, FAILING, FRAMES = "bf-exact", "bf-fails", 60


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One daemon for both backfill tests, each with its own render; both backfills exist before it starts.

    The automation sensor (``render_automation``, RUNNING by default) is stopped first, as a user
    would toggle it in the UI: it reacts to new partitions and, once a backfill has ended, would
    request a failed chunk again on its own (its condition leaves targets alone only while a
    backfill is in progress), racing the re-execution under test. With it stopped, every run here
    comes from a backfill.

    The daemon's backfill loop runs every 30 s, so the two renders share its loops: ``bf-fails``
    is backfilled without its plan (its chunks render in the first loop, while ``bf-exact`` plans),
    so the chunk runs of ``bf-exact`` start in the second loop with the chunk pool to themselves.
    """
    root = tmp_path_factory.mktemp("daemon")
    home, storage_dir, inbox = root / "home", root / "storage", root / "inbox"
    inbox.mkdir()
    write_instance_config(home)
    env = deployment_env(home, storage_dir, inbox)
    storage = RenderStorage(location=str(storage_dir))
    instance = open_instance(home)
    specs = root / "specs"
    failing_page = failing_composition(root / "failing")
    renders = {
        EXACT: write_spec(specs, EXACT, busy_composition(root / "busy"), frame_count=FRAMES, concurrency=MAX_CHUNKS),
        FAILING: write_spec(specs, FAILING, failing_page, frame_count=FRAMES, concurrency=MAX_CHUNKS),
    }
    try:
        with deployment_workspace(instance, env) as workspace:
            (location,) = workspace.code_locations  # workspace.yaml has one: helios_pipeline
            repository = next(iter(location.get_repositories().values()))
            automation = repository.get_sensor("render_automation")
            instance.stop_sensor(automation.get_remote_origin_id(), automation.selector_id, automation)
            backfills = {}
            for key, spec_file in renders.items():
                registered, _ = register_spec_file(storage, spec_file, MAX_CHUNKS)
                assert registered == key
                instance.add_dynamic_partitions(RENDERS, [key])
                backfills[key] = launch_backfill(
                    instance,
                    key,
                    workspace.asset_graph,
                    tags={"dagster/priority": "1" if key == EXACT else "0"},  # bf-exact's runs dequeue first
                    with_plan=key == EXACT,
                )
            with running_daemon(env, root / "daemon.log"):
                yield Deployment(instance, storage, workspace.asset_graph, backfills, failing_page)
    finally:
        instance.wipe_daemon_heartbeats()
        instance.dispose()


# (first in the module: its re-execution then shares daemon loops with the other test's backfill)
def test_permanent_chunk_failure_then_reexecution_renders_only_that_chunk(deployment: Deployment) -> None:
    instance, graph = deployment.instance, deployment.asset_graph
    first_backfill = deployment.backfills[FAILING]
    partitions = {chunk: chunk_partition(FAILING, chunk) for chunk in ("000", "001", "002")}

    status = wait_for_backfill(instance, first_backfill)

    assert status in FAILED
    chunks = chunk_runs(backfill_runs(instance, first_backfill))
    statuses = {chunk: [r.dagster_run.status for r in runs] for chunk, runs in chunks.items()}
    assert statuses == {
        "000": [dg.DagsterRunStatus.SUCCESS],
        "001": [dg.DagsterRunStatus.FAILURE],  # a page error: no step retry, and no run retry
        "002": [dg.DagsterRunStatus.SUCCESS],
    }
    materialized = instance.get_materialized_partitions(CHUNK)
    assert partitions["000"] in materialized and partitions["002"] in materialized
    assert partitions["001"] not in materialized
    assert FAILING not in instance.get_materialized_partitions(CONCAT)
    assert FAILING not in instance.get_materialized_partitions(MIXED)
    assert not any(r.dagster_run.asset_selection & {CONCAT, MIXED} for r in render_runs(instance, FAILING))
    before = {chunk: materialization_count(instance, CHUNK, partition) for chunk, partition in partitions.items()}
    assert before == {"000": 1, "001": 0, "002": 1}

    # fix the page, then what the UI calls "Re-execute backfill -> from failure"
    shutil.copy(COMPOSITIONS / "frame_raf" / "index.html", deployment.failing_composition / "index.html")
    retry_backfill = reexecute_backfill_from_failure(instance, first_backfill, graph)
    assert wait_for_backfill(instance, retry_backfill) == BulkActionStatus.COMPLETED_SUCCESS

    retry_runs = backfill_runs(instance, retry_backfill)
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in retry_runs)
    assert sorted(chunk_runs(retry_runs)) == ["001"], "only the failed chunk may be rendered again"
    after = {chunk: materialization_count(instance, CHUNK, partition) for chunk, partition in partitions.items()}
    assert after == {"000": 1, "001": 1, "002": 1}
    assert set().union(*(r.dagster_run.asset_selection for r in retry_runs)) == {CHUNK, CONCAT, MIXED}
    assert frame_indices(final_video(instance, FAILING)) == list(range(FRAMES))


def test_backfill_renders_chunks_in_parallel_then_concat_and_final(deployment: Deployment) -> None:
    instance, backfill_id = deployment.instance, deployment.backfills[EXACT]

    status = wait_for_backfill(instance, backfill_id)

    assert status == BulkActionStatus.COMPLETED_SUCCESS
    records = backfill_runs(instance, backfill_id)
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records)
    assert [r.dagster_run.asset_selection for r in records].count({PLAN}) == 1
    chunks = chunk_runs(records)
    assert sorted(chunks) == ["000", "001", "002"] and all(len(runs) == 1 for runs in chunks.values())
    spans = sorted((runs[0].start_time, runs[0].end_time) for runs in chunks.values())
    assert all(start and end for start, end in spans)
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :] if b[0] < a[1]]
    assert overlapping, f"the chunk runs ran one after another: {spans}"
    for asset in (CONCAT, MIXED):
        assert EXACT in instance.get_materialized_partitions(asset)
    final_runs = [r for r in records if r.dagster_run.asset_selection & {CONCAT, MIXED}]
    assert [r.dagster_run.asset_selection for r in final_runs] == [{CONCAT, MIXED}]  # concat + mix in one run
    video = final_video(instance, EXACT)
    assert video == deployment.storage.plan_for(EXACT).final_output_file
    assert frame_indices(video) == list(range(FRAMES))
    assert check_results(instance, [final_runs[0].dagster_run.run_id]) == {
        "chunks_complete": True,
        "final_video_valid": True,
    }


# --- the CLI through Dagster (it starts and stops its own daemon) ---------------------------------


@dataclass
class CliDeployment:
    home: Path
    env: dict[str, str]
    instance: dg.DagsterInstance
    specs: Path
    log: Path  # the CLI's stdout and stderr
    scratch: Path  # the CLI's TMPDIR: what it and every process it starts leave in their temporary folder

    def assert_no_scratch_left(self) -> None:
        left = sorted(str(path.relative_to(self.scratch)) for path in self.scratch.rglob("*"))
        assert not left, f"left in the temporary folder: {left}"


@pytest.fixture
def cli_deployment(tmp_path: Path) -> Iterator[CliDeployment]:
    home, inbox = tmp_path / "home", tmp_path / "inbox"
    inbox.mkdir()
    write_instance_config(home)
    instance = open_instance(home)  # creates the sqlite storage before the CLI and its daemon open it
    scratch = Path(tempfile.mkdtemp(prefix="helios-cli-tmp-"))  # short: sockets go in it (108-byte path limit)
    try:
        env = {**deployment_env(home, tmp_path / "storage", inbox), "TMPDIR": str(scratch)}
        yield CliDeployment(home, env, instance, tmp_path / "specs", tmp_path / "cli.log", scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        for process in deployment_processes(home):  # only if a test failed half-way
            with contextlib.suppress(psutil.Error):
                process.kill()
        instance.wipe_daemon_heartbeats()
        instance.dispose()


def cli_render(deployment: CliDeployment, spec: Path, **popen: Any) -> subprocess.Popen:
    """``helios-pipeline render SPEC -q`` with the deployment's environment; its output goes to ``deployment.log``."""
    command = [sys.executable, "-m", "helios_pipeline.cli", "render", str(spec), "-q"]
    with deployment.log.open("wb") as log:
        return subprocess.Popen(command, cwd=REPO, env=deployment.env, stdout=log, stderr=subprocess.STDOUT, **popen)


def cli_output(deployment: CliDeployment) -> str:
    return deployment.log.read_text(encoding="utf-8", errors="replace")[-3000:]


def test_cli_render_runs_through_dagster_and_leaves_nothing_running(cli_deployment: CliDeployment) -> None:
    instance = cli_deployment.instance
    assert not instance.get_daemon_heartbeats(), "this test needs an instance without a daemon"
    spec = write_spec(cli_deployment.specs, "cli-exact", COMPOSITIONS / "frame_raf", frame_count=45, concurrency=2)

    process = cli_render(cli_deployment, spec)
    process.wait(timeout=150)

    assert process.returncode == 0, cli_output(cli_deployment)
    video = spec.parent / "out" / "cli-exact.mp4"
    assert frame_indices(video) == list(range(45))
    records = render_runs(instance, "cli-exact")
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records)
    selections = [r.dagster_run.asset_selection for r in records]
    assert selections.count({PLAN}) == 1
    chunks = chunk_runs(records)
    # only the chunks the plan uses (2 of the deployment's 3) get a run; automation requests nothing twice
    assert sorted(chunks) == ["000", "001"] and all(len(runs) == 1 for runs in chunks.values())
    assert set().union(*selections) == {PLAN, CHUNK, CONCAT, MIXED}
    assert len(records) == 4  # plan (in the CLI's process), two chunks, concat + mix
    (backfill,) = render_backfills(instance, "cli-exact")
    assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS
    launched = [r.dagster_run for r in records if r.dagster_run.asset_selection != {PLAN}]
    assert all(run.tags.get("dagster/backfill") == backfill.backfill_id for run in launched)
    assert chunk_partition("cli-exact", "002") in instance.get_materialized_partitions(CHUNK)  # skipped, runless
    # each launched run had a process of its own, forked from the deployment's warm run-worker process
    worker_pids = {run.tags.get(RUN_WORKER_PID_TAG) for run in launched}
    assert None not in worker_pids and len(worker_pids) == len(launched), worker_pids
    # concat + mix start soon after the last chunk: no loop or cold process start in between (generous bound)
    path = critical_path(timeline_runs(instance, "cli-exact"), started=0.0)
    final_wait = time_of(path, "final", "started") - time_of(path, "last chunk", "materialised")
    assert final_wait < FINAL_RUN_START_BOUND_S, [(m.label, m.timestamp) for m in path]
    assert video == final_video(instance, "cli-exact")
    assert not deployment_processes(cli_deployment.home), describe(deployment_processes(cli_deployment.home))
    cli_deployment.assert_no_scratch_left()
    # the CLI's daemon ran no automation; the deployment's, started afterwards, finds nothing left to do
    with running_daemon(cli_deployment.env, cli_deployment.home / "deployment.log"):
        since = time.time()
        wait_for(lambda: automation_ticks_since(instance, since) >= 2, 120, "two automation ticks")
        assert len(render_runs(instance, "cli-exact")) == 4


def wait_for_a_chunk_run(deployment: CliDeployment, cli: subprocess.Popen, key: str) -> None:
    """Until one of render ``key``'s chunk runs has started (the CLI that submitted it must still be running)."""

    def chunk_started() -> bool:
        assert cli.poll() is None, cli_output(deployment)
        records = chunk_runs(render_runs(deployment.instance, key)).values()
        return any(r.dagster_run.status == dg.DagsterRunStatus.STARTED for runs in records for r in runs)

    wait_for(chunk_started, 90, "a chunk run to start", 0.2)


def test_ctrl_c_on_the_cli_terminates_the_runs_and_leaves_nothing_running(cli_deployment: CliDeployment) -> None:
    instance = cli_deployment.instance
    spec = write_spec(cli_deployment.specs, "cli-cancel", COMPOSITIONS / "slow", width=160, height=120, frame_count=300)
    output = spec.parent / "out" / "cli-cancel.mp4"

    process = cli_render(cli_deployment, spec, start_new_session=True)
    try:
        wait_for_a_chunk_run(cli_deployment, process, "cli-cancel")
        # ps names each run worker by its run (forked from the daemon, it would otherwise show the daemon's command)
        started = [r.dagster_run for runs in chunk_runs(render_runs(instance, "cli-cancel")).values() for r in runs]
        started = [run for run in started if run.status == dg.DagsterRunStatus.STARTED]
        for run in started:
            title = " ".join(psutil.Process(int(run.tags[RUN_WORKER_PID_TAG])).cmdline()).strip()
            assert title == RUN_WORKER_TITLE.format(run_id=run.run_id), title
        os.killpg(process.pid, signal.SIGINT)  # what a terminal sends to the foreground group on Ctrl-C
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    assert process.returncode == 130, cli_output(cli_deployment)
    assert "cancelled" in cli_output(cli_deployment)
    assert not deployment_processes(cli_deployment.home), describe(deployment_processes(cli_deployment.home))
    cli_deployment.assert_no_scratch_left()
    assert not output.exists()
    assert "cli-cancel" not in instance.get_materialized_partitions(MIXED)
    chunks = chunk_runs(render_runs(instance, "cli-cancel"))
    assert chunks, "no chunk run was launched"
    statuses = {chunk: [r.dagster_run.status for r in runs] for chunk, runs in chunks.items()}
    assert all(status in ENDED_RUN for runs in statuses.values() for status in runs), statuses
    rendered = [  # not the chunk partitions the plan leaves unused: they are recorded empty right after planning
        key
        for key in instance.get_materialized_partitions(CHUNK)
        if key.endswith("|cli-cancel") and not latest_metadata(instance, CHUNK, key).get("skipped")
    ]
    assert rendered == [], "a terminated chunk run must not render its chunk after all (by a step retry)"
    assert [b.status for b in render_backfills(instance, "cli-cancel")] == [BulkActionStatus.CANCELED]


def test_a_cli_killed_outright_takes_its_own_daemon_with_it(cli_deployment: CliDeployment) -> None:
    """SIGKILL (or the out-of-memory killer) leaves the CLI no chance to stop the daemon it started: the daemon,
    in a session of its own, sees its parent gone and stops itself with everything it started, instead of running
    on with nobody following its render."""
    instance = cli_deployment.instance
    spec = write_spec(cli_deployment.specs, "cli-killed", COMPOSITIONS / "slow", width=160, height=120, frame_count=300)
    process = cli_render(cli_deployment, spec)
    try:
        wait_for_a_chunk_run(cli_deployment, process, "cli-killed")
        process.kill()  # the CLI alone: its daemon runs in a session of its own
        process.wait(timeout=10)
        wait_for(lambda: not deployment_processes(cli_deployment.home), 30, "the CLI's daemon and its runs to stop")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = (cli_deployment.home / DAEMON_LOG_NAME).read_text(encoding="utf-8", errors="replace")
    assert f"the CLI that started it (pid {process.pid}) is gone" in log, log[-2000:]
    cli_deployment.assert_no_scratch_left()
    assert not instance.get_daemon_heartbeats(), "a stopped daemon's heartbeats would make the next CLI wait on it"
    chunks = chunk_runs(render_runs(instance, "cli-killed"))
    statuses = {chunk: [r.dagster_run.status for r in runs] for chunk, runs in chunks.items()}
    assert all(status in ENDED_RUN for runs in statuses.values() for status in runs), statuses


def test_the_same_render_submitted_again_while_it_runs_is_followed_and_a_changed_one_refused(
    cli_deployment: CliDeployment,
) -> None:
    """An overlapping scheduled job, a double submit: the same spec again follows the render in progress (no second
    backfill, no chunk or final run twice, no second daemon); a changed spec is refused before it can change the
    render in flight (its registered snapshot is what every run reads). Ctrl-C on a CLI that joined stops its
    following only: the render goes on for the CLI that submitted it."""
    instance, frames = cli_deployment.instance, 600  # busy frames: ~20 s, so that it is still going when joined
    page = busy_composition(cli_deployment.specs / "busy")
    spec = write_spec(cli_deployment.specs, "twice", page, frame_count=frames, concurrency=2)
    changed = write_spec(cli_deployment.specs / "changed", "twice", page, frame_count=90, concurrency=2)
    command = [sys.executable, "-m", "helios_pipeline.cli", "render", "-q"]
    first = cli_render(cli_deployment, spec)
    try:
        wait_for_a_chunk_run(cli_deployment, first, "twice")
        # three more CLIs at once, while the first renders: a changed spec, and the same spec twice
        options: dict[str, Any] = {"cwd": REPO, "env": cli_deployment.env, "stderr": subprocess.PIPE, "text": True}
        clis = {
            name: subprocess.Popen([*command, str(path)], start_new_session=True, **options)
            for name, path in (("changed", changed), ("interrupted", spec), ("again", spec))
        }
        interrupted = clis["interrupted"]
        assert interrupted.stderr is not None
        assert "render twice is already in progress" in interrupted.stderr.readline()
        os.killpg(interrupted.pid, signal.SIGINT)
        said = {name: cli.communicate(timeout=180)[1] for name, cli in clis.items()}
        assert clis["changed"].returncode == 1, said["changed"]
        assert "render twice is in progress" in said["changed"] and "with another spec" in said["changed"]
        assert interrupted.returncode == 130, said["interrupted"]
        assert "stopped following render twice: it goes on" in said["interrupted"]
        assert clis["again"].returncode == 0, said["again"]
        assert "render twice is already in progress" in said["again"], said["again"]
        assert first.wait(timeout=180) == 0, cli_output(cli_deployment)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert frame_indices(spec.parent / "out" / "twice.mp4") == list(range(frames))  # not the changed spec's 90
    assert not (changed.parent / "out").exists()
    (backfill,) = render_backfills(instance, "twice")
    assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS
    records = render_runs(instance, "twice")
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records)
    chunks = chunk_runs(records)
    assert sorted(chunks) == ["000", "001"] and all(len(runs) == 1 for runs in chunks.values()), chunks
    finals = [r for r in records if MIXED in (r.dagster_run.asset_selection or ())]
    assert len(finals) == 1, [r.dagster_run.run_id for r in finals]
    log = (cli_deployment.home / DAEMON_LOG_NAME).read_text(encoding="utf-8", errors="replace")
    assert log.count("Instance is configured with the following daemons") == 1, "a second daemon was started"
    assert not deployment_processes(cli_deployment.home), describe(deployment_processes(cli_deployment.home))


def test_two_renders_started_at_once_share_one_daemon_that_outlives_the_first_cli(
    cli_deployment: CliDeployment,
) -> None:
    """No deployment runs, and two CLIs start two renders at once: each used to start a daemon, and two daemons on
    one instance both launch every backfill's runs (final runs two and three times). The second CLI relies on the
    first one's daemon instead; the first CLI, done while the second render runs, hands its daemon over rather than
    stopping it with the other render's run workers, and the daemon stops once no render is left."""
    instance, frames = cli_deployment.instance, {"short": 30, "long": 120}  # one chunk each: in the pool's 2 slots
    command = [sys.executable, "-m", "helios_pipeline.cli", "render", "-q"]
    options: dict[str, Any] = {"cwd": REPO, "env": cli_deployment.env, "stderr": subprocess.PIPE, "text": True}
    clis = {}
    with Gate() as held:  # the long render waits at its first frame until the short one's CLI is done
        pages = {"short": COMPOSITIONS / "frame_raf", "long": gated_composition(cli_deployment.specs / "gated", held)}
        fields: dict[str, Any] = {"concurrency": 1, **held.spec_fields}
        specs = {
            name: write_spec(cli_deployment.specs, name, pages[name], frame_count=n, **fields)
            for name, n in frames.items()
        }
        try:
            for name, spec in specs.items():
                clis[name] = subprocess.Popen([*command, str(spec)], **options)
                time.sleep(0.3)
            said = {"short": clis["short"].communicate(timeout=300)[1]}
            assert clis["long"].poll() is None, "the long render was still held at its gate"
            held.open()
            said["long"] = clis["long"].communicate(timeout=300)[1]
        finally:
            for cli in clis.values():
                if cli.poll() is None:
                    cli.kill()
                    cli.wait()
    assert [cli.returncode for cli in clis.values()] == [0, 0], said
    assert "goes on for the other renders on this instance" in said["short"], said["short"]
    wait_for(lambda: not deployment_processes(cli_deployment.home), 30, "the shared daemon to stop", 0.5)
    log = (cli_deployment.home / DAEMON_LOG_NAME).read_text(encoding="utf-8", errors="replace")
    assert log.count("Instance is configured with the following daemons") == 1, "a second daemon ran"
    assert "handed it over" in log and "no render is left in progress on this instance: stopping" in log
    assert not list(cli_deployment.home.glob(f"*{HANDOVER_SUFFIX}")), "the stopped daemon left its hand-over file"
    for name, count in frames.items():
        assert frame_indices(specs[name].parent / "out" / f"{name}.mp4") == list(range(count))
        (backfill,) = render_backfills(instance, name)
        assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS
        records = render_runs(instance, name)
        assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records), name
        assert all(len(runs) == 1 for runs in chunk_runs(records).values()), name
        assert len([r for r in records if MIXED in (r.dagster_run.asset_selection or ())]) == 1, name
    assert not instance.get_daemon_heartbeats(), "the stopped daemon's heartbeats would make the next CLI wait"
    cli_deployment.assert_no_scratch_left()


def test_a_failing_page_on_the_cli_exits_1_and_leaves_no_run_or_backfill_going(
    cli_deployment: CliDeployment, tmp_path: Path
) -> None:
    instance = cli_deployment.instance
    page = failing_composition(tmp_path / "failing")
    spec = write_spec(cli_deployment.specs, "cli-fails", page, frame_count=60, concurrency=3)

    process = cli_render(cli_deployment, spec)
    process.wait(timeout=150)

    output = cli_output(cli_deployment)
    assert process.returncode == 1, output
    assert "boom in chunk 001" in output
    assert not (spec.parent / "out" / "cli-fails.mp4").exists()
    assert not deployment_processes(cli_deployment.home), describe(deployment_processes(cli_deployment.home))
    records = render_runs(instance, "cli-fails")
    assert records and all(r.dagster_run.is_finished for r in records)
    statuses = {r.dagster_run.tags.get("dagster/partition/chunk"): r.dagster_run.status for r in records}
    assert statuses["001"] == dg.DagsterRunStatus.FAILURE
    assert [b.status in BULK_ACTION_TERMINAL_STATUSES for b in render_backfills(instance, "cli-fails")] == [True]
