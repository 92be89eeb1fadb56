"""The Celery + Postgres deployment (deploy/celery/) end to end, on real servers on 127.0.0.1.

Each cluster test gets its own instance database in the session's Postgres, the session's Redis as
Celery broker and result backend, the project's daemon, and two Celery workers started the
documented way (`helios-pipeline worker`), each with its own working folder, HOME and DAGSTER_HOME
holding deploy/celery/dagster.yaml. Renders are small (320x180, 2-3 s at 30 fps) frame-index pages.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import pytest
import yaml
from dagster._core.instance.ref import InstanceRef

from helios_pipeline.dagster_defs.deployment_check import DeploymentUnreachable, check_deployment
from helios_pipeline.dagster_defs.runner import follow
from helios_pipeline.dagster_defs.worker import node_name
from helios_pipeline_tests import services
from helios_pipeline_tests.framecode import frame_indices
from helios_pipeline_tests.test_dagster_assets import write_spec
from helios_pipeline_tests.test_dagster_daemon import (
    CHUNK,
    busy_composition,
    chunk_runs,
    describe,
    render_runs,
    running_daemon,
    wait_for,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "celery"
WORKERS = ("w1", "w2")
MAX_CHUNKS = 3
CHUNK_POOL = "helios_chunks"
SIZE = {"width": 320, "height": 180, "fps": 30}
RENDER_TIMEOUT_S = 300
TASK_ID_TAG = "dagster-celery/task_id"


def storage_env(s3: services.S3Server) -> dict[str, str]:
    """Chunks, bundles and videos in a fresh bucket of the session's S3 server: the workers share no disk."""
    return {"HELIOS_STORAGE": f"s3://{s3.create_bucket()}/renders", **s3.env()}


# --- the cluster ----------------------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    home: Path  # DAGSTER_HOME
    log: Path
    process: subprocess.Popen

    @property
    def node(self) -> str:
        return node_name(self.name)

    def processes(self) -> list[psutil.Process]:
        """The worker's live processes (Celery, pool, run workers, Chromium, FFmpeg): they carry its DAGSTER_HOME."""
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get("DAGSTER_HOME") == str(self.home) and process.status() != "zombie":
                    found.append(process)
        return found

    def chromium(self) -> list[psutil.Process]:
        return [p for p in self.processes() if "chrom" in _name(p)]


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]  # the deployment's environment (without DAGSTER_HOME)
    home: Path  # DAGSTER_HOME of the test process, the daemon and the CLI
    instance: dg.DagsterInstance
    workers: dict[str, Worker]
    daemon_log: Path
    s3: services.S3Server

    def env_for(self, home: Path) -> dict[str, str]:
        return {**self.env, "DAGSTER_HOME": str(home)}

    def worker_of(self, run: dg.DagsterRun) -> str:
        """The worker whose Celery log received the run's task (Celery logs each task id it receives)."""
        task_id = run.tags[TASK_ID_TAG]
        owners = [w.node for w in self.workers.values() if task_id in w.log.read_text(errors="replace")]
        assert len(owners) == 1, f"task {task_id} of run {run.run_id} found in the logs of {owners}"
        return owners[0]

    def logs(self) -> str:
        parts = [f"--- daemon ---\n{self.daemon_log.read_text(errors='replace')[-3000:]}"]
        parts += [f"--- {w.name} ---\n{w.log.read_text(errors='replace')[-3000:]}" for w in self.workers.values()]
        return "\n".join(parts)


def _name(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return process.name().lower()
    return ""


def deployment_env(postgres: services.PostgresServer, database: str, redis: services.RedisServer) -> dict[str, str]:
    """The variables deploy/celery/*.yaml read, on top of this environment (minus any DAGSTER_/HELIOS_ ones)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "HELIOS_", "AWS_"))}
    env.update(
        HELIOS_PG_HOST=postgres.host,
        HELIOS_PG_PORT=str(postgres.port),
        HELIOS_PG_USER=postgres.user,
        HELIOS_PG_PASSWORD="",
        HELIOS_PG_DB=database,
        HELIOS_CELERY_BROKER=redis.url(0),
        HELIOS_CELERY_BACKEND=redis.url(1),
        HELIOS_MAX_CHUNKS=str(MAX_CHUNKS),
    )
    return env


def make_home(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEPLOY / "dagster.yaml", folder / "dagster.yaml")
    return folder


def worker_command(name: str) -> list[str]:
    """`helios-pipeline worker -n NAME` (the console script's entry point, run by this Python)."""
    return [
        sys.executable,
        "-m",
        "helios_pipeline.cli",
        "worker",
        "-n",
        name,
        "-c",
        "1",
        "-y",
        str(DEPLOY / "worker.yaml"),
    ]


def start_worker(root: Path, name: str, env: dict[str, str]) -> Worker:
    folder = root / name
    home, user_home = make_home(folder / "dagster_home"), folder / "home"
    user_home.mkdir(parents=True)
    log = folder / "worker.log"
    own = {"DAGSTER_HOME": str(home), "HOME": str(user_home), "HELIOS_CACHE": str(folder / "cache")}
    with log.open("wb") as stream:
        process = subprocess.Popen(
            worker_command(name),
            cwd=folder,
            env={**env, **own},
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Worker(name, home, log, process)


def stop_worker(worker: Worker) -> None:
    """Cold stop (the runs left are the test's to judge, not to finish), then nothing of the worker may live on."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.process.pid, signal.SIGQUIT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        worker.process.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
    deadline = time.monotonic() + 20  # Chromium exits with its Playwright driver
    while worker.processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    for leftover in worker.processes():
        with contextlib.suppress(psutil.Error):
            leftover.kill()


@pytest.fixture
def cluster(
    tmp_path: Path,
    postgres_server: services.PostgresServer,
    redis_server: services.RedisServer,
    s3_server: services.S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cluster]:
    env = {
        **deployment_env(postgres_server, postgres_server.create_database(), redis_server),
        **storage_env(s3_server),
        "HELIOS_INBOX": str(tmp_path / "inbox"),
        "HELIOS_CACHE": str(tmp_path / "control-cache"),  # each worker has its own (start_worker)
    }
    (tmp_path / "inbox").mkdir()
    home = make_home(tmp_path / "control_home")
    for key, value in {**env, "DAGSTER_HOME": str(home)}.items():
        monkeypatch.setenv(key, value)  # the test process reads the same instance (and follow() its storage)
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))  # creates the Postgres schema
    workers: dict[str, Worker] = {}
    daemon_log = tmp_path / "daemon.log"
    try:
        # The pool limit is instance state in Postgres, set the way an operator would
        # (`dagster instance concurrency set helios_chunks 1`): one chunk at a time across both workers.
        instance.event_log_storage.set_concurrency_slots(CHUNK_POOL, 1)
        for name in WORKERS:
            workers[name] = start_worker(tmp_path, name, env)
        for worker in workers.values():
            wait_for(lambda w=worker: _ready(w), 90, f"worker {worker.name} to be ready", 0.5)
        with running_daemon({**env, "DAGSTER_HOME": str(home)}, daemon_log):
            cluster = Cluster(tmp_path, env, home, instance, workers, daemon_log, s3_server)
            wait_for(lambda: "MONITORING" in instance.get_daemon_heartbeats(), 90, "the daemon's heartbeats", 0.5)
            yield cluster
    finally:
        for worker in workers.values():
            stop_worker(worker)
        instance.dispose()


def _ready(worker: Worker) -> bool:
    assert worker.process.poll() is None, worker.log.read_text(errors="replace")[-3000:]
    return " ready." in worker.log.read_text(errors="replace")


def submit(cluster: Cluster, spec: Path) -> tuple[str, float]:
    """`helios-pipeline submit SPEC` against the cluster's instance; returns the render key and when it was sent."""
    since = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "helios_pipeline.cli", "submit", str(spec)],
        cwd=REPO,
        env=cluster.env_for(cluster.home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1], since


def follow_render(cluster: Cluster, key: str, since: float) -> str:
    """The render's output: a path on the machine that mixed it, or an s3:// URI."""
    try:
        status = follow(cluster.instance, key, since, lambda _status: None, timeout=RENDER_TIMEOUT_S)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{cluster.logs()}") from exc
    assert status.finished and status.output
    return status.output


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


# --- renders on two workers -----------------------------------------------------------------------


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
    """The Celery pool process rendering a chunk right now: a fork of the Celery main process (same command
    line) with Chromium's driver or FFmpeg below it. Killing the main process instead would not stop the run:
    its pool process finishes the task on its own."""
    rendering = {}
    for process in worker.processes():
        with contextlib.suppress(psutil.Error):
            below = {_name(child) for child in process.children(recursive=True)}
            if "celery" in " ".join(process.cmdline()) and below & {"node", "ffmpeg"}:
                rendering[process.pid] = process
    parents = set()
    for process in rendering.values():
        with contextlib.suppress(psutil.Error):
            parents.add(process.ppid())
    # the lowest of the chain dagster-celery wrapper -> Celery main process -> pool process
    pool = [process for pid, process in rendering.items() if pid not in parents and process.ppid() in rendering]
    return pool[0] if pool else None


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


def graphql(url: str, query: str, **variables: Any) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.loads(response.read())
    assert not payload.get("errors"), payload["errors"]
    return payload["data"]


def test_a_run_terminated_over_graphql_ends_canceled_and_its_chromium_is_gone(cluster: Cluster, tmp_path: Path) -> None:
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
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")  # the one-machine config: DefaultRunLauncher

    result = run_worker_cli(env, home)

    assert result.returncode == 2
    assert f"{home / 'dagster.yaml'}: run_launcher is none (Dagster's default)" in result.stderr

    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump({"broker": redis_server.url(0)}), encoding="utf-8")
    result = run_worker_cli(env, make_home(tmp_path / "celery_home"), "-y", str(flat))
    assert result.returncode == 2
    assert "no `execution: config:` section (found a flat file" in result.stderr
