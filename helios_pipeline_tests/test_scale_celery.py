"""The Celery + Postgres deployment (deploy/celery/) end to end, on real servers on 127.0.0.1.

A cluster is an instance database in the session's Postgres, the session's Redis as
Celery broker and result backend, the project's daemon, and two Celery workers started the
documented way (`helios-pipeline worker`), each with its own working folder, HOME and DAGSTER_HOME
holding deploy/celery/dagster.yaml. Renders are small (320x180, 2-3 s at 30 fps) frame-index pages.
The frame-exact render and the killed pool process share one cluster (each leaves it idle, in either
order); the terminated run leaves a render that automation may request again, so it has its own.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import pytest
import yaml
from dagster._core.instance.ref import InstanceRef

from helios_pipeline.dagster_defs.deployment_check import DeploymentUnreachable, check_deployment
from helios_pipeline_tests import services
from helios_pipeline_tests.cluster import (
    SIZE,
    TASK_ID_TAG,
    Cluster,
    Worker,
    celery_cluster,
    deployment_env,
    follow_render,
    make_home,
    submit,
)
from helios_pipeline_tests.framecode import frame_indices
from helios_pipeline_tests.helpers import (
    CHUNK,
    browser_parents,
    busy_composition,
    chunk_runs,
    describe,
    graphql,
    render_runs,
    wait_for,
    write_spec,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MAX_CHUNKS = 3


# --- the cluster ----------------------------------------------------------------------------------


@contextlib.contextmanager
def two_workers(
    root: Path, postgres: services.PostgresServer, redis: services.RedisServer, s3: services.S3Server
) -> Iterator[Cluster]:
    """Two workers, one chunk at a time across both (so the pool limit is what keeps chunks apart)."""
    with celery_cluster(root, postgres, redis, s3, pool_slots=1, max_chunks=MAX_CHUNKS) as started:
        yield started


@pytest.fixture(scope="module")
def shared_cluster(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: services.PostgresServer,
    redis_server: services.RedisServer,
    s3_server: services.S3Server,
) -> Iterator[Cluster]:
    """One cluster for the tests that leave it as they found it: every run of theirs ended, the pool slot
    free, both workers up and idle (a worker whose pool process was killed forks a new one)."""
    with two_workers(tmp_path_factory.mktemp("cluster"), postgres_server, redis_server, s3_server) as started:
        yield started


@pytest.fixture
def cluster(shared_cluster: Cluster) -> Cluster:
    """The shared cluster, idle: no run of an earlier test is still going."""
    instance = shared_cluster.instance
    wait_for(lambda: all(run.is_finished for run in instance.get_runs()), 60, "the earlier test's runs to end")
    return shared_cluster


@pytest.fixture
def own_cluster(
    tmp_path: Path,
    postgres_server: services.PostgresServer,
    redis_server: services.RedisServer,
    s3_server: services.S3Server,
) -> Iterator[Cluster]:
    """A cluster of the test's own, for a test that leaves work behind (a terminated render that
    automation may request again)."""
    with two_workers(tmp_path / "cluster", postgres_server, redis_server, s3_server) as started:
        yield started


def step_spans(instance: dg.DagsterInstance, run_id: str) -> list[tuple[float, float]]:
    """(start, end) of each step of a run, from its STEP_START and STEP_SUCCESS/FAILURE events."""
    starts, spans = {}, []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = record.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            spans.append((starts[event.step_key], record.timestamp))
    return spans


def chunk_metadata(instance: dg.DagsterInstance, key: str) -> dict[str, dict[str, Any]]:
    """The latest chunk_video materialisation metadata per chunk key of render ``key``."""
    found = {}
    for chunk in (f"{i:03d}" for i in range(MAX_CHUNKS)):
        partition = str(dg.MultiPartitionKey({"render": key, "chunk": chunk}))
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=CHUNK, asset_partitions=[partition]), limit=1
        ).records
        if records and records[0].asset_materialization:
            found[chunk] = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
    return found


# --- terminate over GraphQL -----------------------------------------------------------------------

TERMINATE = """
mutation($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunFailure { message }
    ... on PythonError { message }
  }
}"""


@contextlib.contextmanager
def webserver(cluster: Cluster) -> Iterator[str]:
    port = services.free_port()
    command = [sys.executable, "-m", "dagster_webserver", "-w", str(REPO / "workspace.yaml")]
    command += ["-h", services.HOST, "-p", str(port)]
    log = cluster.root / "webserver.log"
    with log.open("wb") as stream:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=cluster.env_for(cluster.home),
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://{services.HOST}:{port}"
    try:

        def up() -> bool:
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                return bool(graphql(url, "{ version }"))
            return False

        wait_for(up, 120, "the webserver to answer", 0.5)
        yield url
    finally:
        from helios_pipeline.dagster_defs.runner import stop_process_tree

        stop_process_tree(process)


def test_a_run_terminated_over_graphql_ends_canceled_and_its_chromium_is_gone(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = own_cluster
    spec = write_spec(
        tmp_path / "specs", "celery-stop", REPO / "helios_pipeline_tests/compositions/slow", **SIZE, frame_count=90
    )
    with webserver(cluster) as url:
        key, _since = submit(cluster, spec)

        def started() -> tuple[dg.DagsterRun, Worker] | None:
            for runs in chunk_runs(render_runs(cluster.instance, key)).values():
                for record in runs:
                    run = record.dagster_run
                    if run.status == dg.DagsterRunStatus.STARTED and TASK_ID_TAG in run.tags:
                        node = cluster.worker_of(run)
                        worker = next(w for w in cluster.workers.values() if w.node == node)
                        if worker.chromium():
                            return run, worker
            return None

        run, worker = wait_for(started, 120, "a chunk run rendering in Chromium", 0.2)
        result = graphql(url, TERMINATE, runId=run.run_id)["terminateRun"]
        assert result["__typename"] == "TerminateRunSuccess", result

        def ended() -> dg.DagsterRun | None:
            current = cluster.instance.get_run_by_id(run.run_id)
            return current if current and current.is_finished else None

        final = wait_for(ended, 60, f"run {run.run_id} to end", 0.5)
        wait_for(lambda: not worker.chromium(), 20, "the run's Chromium to exit", 0.5)
        assert not worker.chromium(), describe(worker.chromium())
    # the project's launcher marks the run CANCELING before Celery revokes its task (dagster-celery's does not)
    assert final.status == dg.DagsterRunStatus.CANCELED, cluster.logs()
    retries = [r for r in cluster.instance.get_runs() if r.tags.get("dagster/parent_run_id") == run.run_id]
    assert not retries, "a terminated run is not retried"


# --- unreachable servers: clear errors, in seconds --------------------------------------------------


def open_instance(home: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def run_worker_cli(env: dict[str, str], home: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "helios_pipeline.cli", "worker", "-n", "probe", *extra]
    return subprocess.run(command, env={**env, "DAGSTER_HOME": str(home)}, capture_output=True, text=True, timeout=60)


def test_unreachable_redis_is_a_clear_error_from_check_deployment_and_the_worker(
    tmp_path: Path,
    postgres_server: services.PostgresServer,
    redis_server: services.RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dead = services.free_port()  # nothing listens there
    env = deployment_env(postgres_server, postgres_server.create_database(), redis_server)
    env.update(HELIOS_CELERY_BROKER=f"redis://127.0.0.1:{dead}/0", HELIOS_CELERY_BACKEND=f"redis://127.0.0.1:{dead}/1")
    home = make_home(tmp_path / "home")
    instance = open_instance(home, env, monkeypatch)
    try:
        started = time.monotonic()
        with pytest.raises(
            DeploymentUnreachable, match=rf"Celery broker .* at 127\.0\.0\.1:{dead} is unreachable: PING"
        ):
            check_deployment(instance)
        assert time.monotonic() - started < 10
    finally:
        instance.dispose()

    started = time.monotonic()
    result = run_worker_cli(env, home)
    assert result.returncode == 2, result.stderr
    assert f"127.0.0.1:{dead} is unreachable: PING failed" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30


def test_unreachable_postgres_is_a_clear_error_from_check_deployment_and_the_worker(
    tmp_path: Path,
    redis_server: services.RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = make_home(tmp_path / "home")
    with services.postgres() as own_postgres:  # a cluster of this test's own, stopped under the instance's feet
        env = deployment_env(own_postgres, own_postgres.create_database(), redis_server)
        instance = open_instance(home, env, monkeypatch)
    try:
        started = time.monotonic()
        address = f"127.0.0.1:{own_postgres.port}"
        with pytest.raises(DeploymentUnreachable, match=rf"Postgres .* at {address} is unreachable: TCP connect"):
            check_deployment(instance)
        assert time.monotonic() - started < 10
    finally:
        with contextlib.suppress(Exception):
            instance.dispose()

    result = run_worker_cli(env, home)
    assert result.returncode == 2, result.stderr
    assert (
        f"Postgres of the instance storage ({home / 'dagster.yaml'} `storage`) at {address} is unreachable"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_the_worker_refuses_an_instance_without_the_celery_launcher_and_a_flat_worker_config(
    tmp_path: Path, redis_server: services.RedisServer, postgres_server: services.PostgresServer
) -> None:
    env = deployment_env(postgres_server, "unused", redis_server)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")  # the one-machine config: the warm local launcher

    result = run_worker_cli(env, home)

    assert result.returncode == 2
    launcher = "helios_pipeline.dagster_defs.warm_launcher.WarmRunLauncher"
    assert f"{home / 'dagster.yaml'}: run_launcher is {launcher}, not a CeleryRunLauncher" in result.stderr

    bare = tmp_path / "bare_home"
    bare.mkdir()
    config = yaml.safe_load((REPO / "dagster.yaml").read_text(encoding="utf-8"))
    del config["run_launcher"]
    (bare / "dagster.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_worker_cli(env, bare)
    assert result.returncode == 2
    assert f"{bare / 'dagster.yaml'}: run_launcher is none (Dagster's default)" in result.stderr

    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump({"broker": redis_server.url(0)}), encoding="utf-8")
    result = run_worker_cli(env, make_home(tmp_path / "celery_home"), "-y", str(flat))
    assert result.returncode == 2
    assert "no `execution: config:` section (found a flat file" in result.stderr


# --- renders on two workers (last: the shared cluster is up only for them) -------------------------


def test_render_on_two_celery_workers_is_frame_exact_and_the_pool_holds_across_them(
    cluster: Cluster, tmp_path: Path
) -> None:
    frames = 75  # 2.5 s at 30 fps, three chunks of 25
    page = busy_composition(tmp_path / "busy")  # chunks that last a few seconds, so they could overlap
    bucket = cluster.env["HELIOS_STORAGE"].removeprefix("s3://").split("/")[0]
    output = f"s3://{bucket}/videos/celery-exact.mp4"
    spec = write_spec(
        tmp_path / "specs", "celery-exact", page, **SIZE, frame_count=frames, concurrency=MAX_CHUNKS, output=output
    )

    key, since = submit(cluster, spec)
    page.rename(tmp_path / "moved-away")  # registered: from now on only the bundle in S3 has the composition
    assert follow_render(cluster, key, since) == output

    video = tmp_path / "downloaded.mp4"
    cluster.s3.client().download_file(bucket, "videos/celery-exact.mp4", str(video))
    assert frame_indices(video) == list(range(frames))
    records = render_runs(cluster.instance, key)
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records), cluster.logs()
    chunks = chunk_runs(records)
    assert sorted(chunks) == ["000", "001", "002"] and all(len(runs) == 1 for runs in chunks.values())
    runs = {chunk: runs[0].dagster_run for chunk, runs in chunks.items()}
    # every run went through Celery: a task id, received by exactly one of the two workers
    workers = {chunk: cluster.worker_of(run) for chunk, run in runs.items()}
    assert set(workers.values()) == {w.node for w in cluster.workers.values()}, workers
    metadata = chunk_metadata(cluster.instance, key)
    assert sorted(metadata) == ["000", "001", "002"]
    # recorded by the chunk asset from HELIOS_WORKER_ID: two distinct workers, the ones Celery gave the tasks to
    assert {chunk: m["worker_id"] for chunk, m in metadata.items()} == workers
    assert all(m["path"].startswith(cluster.env["HELIOS_STORAGE"]) for m in metadata.values())
    # the pool (1 slot, in Postgres) held across both workers: no two chunk renders overlapped
    spans = sorted(span for run in runs.values() for span in step_spans(cluster.instance, run.run_id))
    assert len(spans) == 3
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans)), spans


def pool_process(worker: Worker) -> psutil.Process | None:
    """The Celery pool process rendering a chunk right now: the parent of the chunk's Playwright driver (the
    run, and its chunk step, execute in the pool process). Killing the main process instead would not stop
    the run: its pool process finishes the task on its own. (Found through the whole tree before, a child
    that vanished mid-scan made the pool process look idle, and the main process was killed: seen in CI.)"""
    for process in browser_parents(worker.processes()):
        with contextlib.suppress(psutil.Error):
            if "celery" in " ".join(process.cmdline()):
                return process
    return None


def test_a_worker_process_killed_mid_chunk_is_detected_and_its_run_retried(cluster: Cluster, tmp_path: Path) -> None:
    frames = 90
    page = busy_composition(tmp_path / "busy")
    spec = write_spec(tmp_path / "specs", "celery-kill", page, **SIZE, frame_count=frames, concurrency=MAX_CHUNKS)
    key, since = submit(cluster, spec)

    def rendering() -> tuple[Worker, psutil.Process] | None:
        for worker in cluster.workers.values():
            process = pool_process(worker)
            if process is not None and worker.chromium():
                return worker, process
        return None

    worker, victim = wait_for(rendering, 120, "a chunk to be rendering on a worker", 0.2)
    victim_pid = victim.pid
    victim.kill()  # SIGKILL: no Python handler runs, nothing is reported by the run itself

    video = Path(follow_render(cluster, key, since))

    assert frame_indices(video) == list(range(frames))
    chunks = chunk_runs(render_runs(cluster.instance, key))
    retried = {chunk: runs for chunk, runs in chunks.items() if len(runs) > 1}
    assert len(retried) == 1, {c: [r.dagster_run.status for r in runs] for c, runs in chunks.items()}
    (runs,) = retried.values()
    runs.sort(key=lambda r: r.create_timestamp)
    killed, retry = runs[0].dagster_run, runs[1].dagster_run
    assert killed.status == dg.DagsterRunStatus.FAILURE
    assert cluster.worker_of(killed) == worker.node
    failure = [e.message for e in cluster.instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)]
    assert any("Detected run worker status" in message for message in failure), failure  # run monitoring
    assert retry.status == dg.DagsterRunStatus.SUCCESS
    assert retry.tags.get("dagster/parent_run_id") == killed.run_id  # run_retries
    assert not psutil.pid_exists(victim_pid) or psutil.Process(victim_pid).status() == "zombie"
