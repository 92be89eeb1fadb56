"""A Celery + Postgres + S3 deployment (deploy/celery/) on 127.0.0.1, for the scale-out tests and bench_scale.py.

The session's Postgres (a fresh instance database per cluster), Redis as Celery broker and result
backend, a fresh bucket of the S3 server, the project's daemon, and Celery workers started the
documented way (`helios-pipeline worker`), each with its own working folder, HOME, DAGSTER_HOME
(holding deploy/celery/dagster.yaml) and cache: they share no disk.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil
import yaml
from dagster._core.instance.ref import InstanceRef

from helios_pipeline.dagster_defs.names import CHUNK_POOL
from helios_pipeline.dagster_defs.runner import follow
from helios_pipeline.dagster_defs.worker import node_name
from helios_pipeline_tests import services
from helios_pipeline_tests.helpers import REPO, faster_run_monitoring, running_daemon, wait_for

DEPLOY = REPO / "deploy" / "celery"

WORKERS = ("w1", "w2")

SIZE = {"width": 320, "height": 180, "fps": 30}

RENDER_TIMEOUT_S = 300

TASK_ID_TAG = "dagster-celery/task_id"


def storage_env(s3: services.S3Server) -> dict[str, str]:
    """Chunks, bundles and videos in a fresh bucket of the session's S3 server: the workers share no disk."""
    return {"HELIOS_STORAGE": f"s3://{s3.create_bucket()}/renders", **s3.env()}


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
        return [p for p in self.processes() if "chrom" in process_name(p)]


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


def process_name(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return process.name().lower()
    return ""


def deployment_env(
    postgres: services.PostgresServer, database: str, redis: services.RedisServer, max_chunks: int = 3
) -> dict[str, str]:
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
        HELIOS_MAX_CHUNKS=str(max_chunks),
    )
    return env


def make_home(folder: Path) -> Path:
    """A DAGSTER_HOME holding deploy/celery/dagster.yaml, with the test deployments' run monitoring timings."""
    folder.mkdir(parents=True, exist_ok=True)
    config = faster_run_monitoring(yaml.safe_load((DEPLOY / "dagster.yaml").read_text(encoding="utf-8")))
    (folder / "dagster.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return folder


def worker_command(name: str, concurrency: int = 1) -> list[str]:
    """`helios-pipeline worker -n NAME` (the console script's entry point, run by this Python)."""
    return [
        sys.executable,
        "-m",
        "helios_pipeline.cli",
        "worker",
        "-n",
        name,
        "-c",
        str(concurrency),
        "-y",
        str(DEPLOY / "worker.yaml"),
    ]


def start_worker(root: Path, name: str, env: dict[str, str], concurrency: int = 1) -> Worker:
    folder = root / name
    home, user_home = make_home(folder / "dagster_home"), folder / "home"
    user_home.mkdir(parents=True)
    log = folder / "worker.log"
    own = {"DAGSTER_HOME": str(home), "HOME": str(user_home), "HELIOS_CACHE": str(folder / "cache")}
    with log.open("wb") as stream:
        process = subprocess.Popen(
            worker_command(name, concurrency),
            cwd=folder,
            env={**env, **own},
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Worker(name, home, log, process)


def stop_worker(worker: Worker) -> None:
    """Cold stop (the runs left are the test's to judge, not to finish), then nothing of the worker may live on.

    SIGQUIT to `helios-pipeline worker`, which passes it to Celery (cold shutdown: running tasks are dropped).
    """
    with contextlib.suppress(ProcessLookupError):
        worker.process.send_signal(signal.SIGQUIT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        worker.process.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
    deadline = time.monotonic() + 10  # Chromium exits with its Playwright driver
    while worker.processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    for leftover in worker.processes():
        with contextlib.suppress(psutil.Error):
            leftover.kill()


def stop_workers(workers: list[Worker]) -> None:
    """All workers at once: each stop waits for its own processes."""
    with ThreadPoolExecutor(max_workers=max(1, len(workers))) as pool:
        list(pool.map(stop_worker, workers))


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


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    """This process sees the deployment's variables (its instance config reads them) for the block."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def celery_cluster(
    root: Path,
    postgres: services.PostgresServer,
    redis: services.RedisServer,
    s3: services.S3Server,
    *,
    workers: tuple[str, ...] = WORKERS,
    worker_concurrency: int = 1,
    pool_slots: int = 1,
    max_chunks: int = 3,
) -> Iterator[Cluster]:
    """Start the deployment (instance schema, pool size, workers, daemon); stop all of it afterwards."""
    env = {
        **deployment_env(postgres, postgres.create_database(), redis, max_chunks),
        **storage_env(s3),
        "HELIOS_INBOX": str(root / "inbox"),
        "HELIOS_CACHE": str(root / "control-cache"),  # each worker has its own (start_worker)
    }
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    home = make_home(root / "control_home")
    with patched_environ({**env, "DAGSTER_HOME": str(home)}):
        instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))  # creates the Postgres schema
        started: dict[str, Worker] = {}
        daemon_log = root / "daemon.log"
        try:
            # the pool is instance state in Postgres, set the way an operator would
            # (`dagster instance concurrency set helios_chunks N`): chunks at once across all workers
            instance.event_log_storage.set_concurrency_slots(CHUNK_POOL, pool_slots)
            for name in workers:
                started[name] = start_worker(root, name, env, worker_concurrency)
            with running_daemon({**env, "DAGSTER_HOME": str(home)}, daemon_log):  # starts while the workers do
                for worker in started.values():
                    wait_for(lambda w=worker: _ready(w), 90, f"worker {worker.name} to be ready", 0.5)
                cluster = Cluster(root, env, home, instance, started, daemon_log, s3)
                wait_for(lambda: "MONITORING" in instance.get_daemon_heartbeats(), 90, "the daemon's heartbeats", 0.5)
                yield cluster
        finally:
            stop_workers(list(started.values()))
            instance.dispose()
