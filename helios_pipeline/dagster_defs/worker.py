"""``helios-pipeline worker``: one Celery worker of the Celery + Postgres deployment, started the one right way.

It runs ``dagster-celery worker start`` with what chunk runs need (deploy/celery/README.md):

- ``--pool=prefork``: a run terminated from the UI gets SIGTERM in its pool process, which stops
  Chromium and FFmpeg; ``--pool=threads`` cannot terminate a run;
- ``--max-tasks-per-child=1``: every run gets a fresh process, so the code location is loaded anew
  (a long-lived process would keep old definitions) and nothing leaks from one render to the next;
- ``--disable-prefetch`` (Celery >= 5.6, Redis broker): a worker takes a run from the queue only when
  it has a free process for it. Celery's default lets a busy worker reserve four runs (with
  ``--prefetch-multiplier=1`` still one) that then wait for it while another worker sits idle;
- the worker config nested under ``execution: config:`` (a flat file is silently ignored and the
  worker waits on amqp://localhost forever);
- ``-n NAME``: the Celery node name; it is exported as ``HELIOS_WORKER_ID`` to the runs, so every
  chunk records which worker rendered it.

Before Celery starts, the instance config in DAGSTER_HOME must use the Celery launcher and the
broker, the result backend and Postgres must answer: a worker that cannot work says so and exits 2,
instead of hanging on a broker or printing a traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from helios_pipeline.dagster_defs.deployment_check import (
    DeploymentUnreachable,
    check_celery_urls,
    check_postgres,
    postgres_url_from_config,
    resolve_env,
)
from helios_pipeline.dagster_defs.settings import PROJECT_ROOT

WORKER_ID_ENV = "HELIOS_WORKER_ID"
DEFAULT_WORKER_CONFIG = PROJECT_ROOT / "deploy" / "celery" / "worker.yaml"
CELERY_LAUNCHERS = {
    ("helios_pipeline.dagster_defs.celery_launcher", "CeleryRunLauncher"),  # records terminations (see there)
    ("dagster_celery.launcher", "CeleryRunLauncher"),
}
STOP_WAIT_S = 60  # a warm shutdown lets the running chunk finish first; after this it is killed


class WorkerConfigError(Exception):
    """The worker cannot start: missing or wrong config, or a server it needs does not answer."""


@dataclass(frozen=True)
class WorkerOptions:
    name: str
    concurrency: int
    config_yaml: Path
    queues: tuple[str, ...] = ()
    loglevel: str = "INFO"


def node_name(name: str) -> str:
    """Celery's node name for ``-n NAME`` (dagster-celery appends ``@%h``: the host name)."""
    return f"{name}@{socket.gethostname()}"


def worker_command(options: WorkerOptions) -> list[str]:
    """``dagster-celery worker start`` for chunk runs (see the module docstring for why each flag)."""
    command = [sys.executable, "-m", "dagster_celery.cli", "worker", "start", "-A", "dagster_celery.app"]
    command += ["-y", str(options.config_yaml), "-n", options.name, "-l", options.loglevel]
    for queue in options.queues:
        command += ["-q", queue]
    return [
        *command,
        "--",
        "--pool=prefork",
        f"--concurrency={options.concurrency}",
        "--max-tasks-per-child=1",
        "--prefetch-multiplier=1",
        "--disable-prefetch",
    ]


def worker_env(options: WorkerOptions) -> dict[str, str]:
    """This process's environment plus HELIOS_WORKER_ID; ``celery`` must be found beside this Python."""
    env = dict(os.environ)
    env[WORKER_ID_ENV] = node_name(options.name)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _load_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise WorkerConfigError(f"{what} {path}: cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise WorkerConfigError(f"{what} {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise WorkerConfigError(f"{what} {path}: expected a mapping at the top level")
    return data


def instance_config(dagster_home: str | None) -> tuple[Path, dict[str, Any]]:
    """DAGSTER_HOME's dagster.yaml, which must configure the Celery run launcher."""
    if not dagster_home:
        raise WorkerConfigError(
            "DAGSTER_HOME is not set: a worker must open the deployment's instance "
            "(DAGSTER_HOME/dagster.yaml, see deploy/celery/dagster.yaml)"
        )
    path = Path(dagster_home) / "dagster.yaml"
    if not path.is_file():
        raise WorkerConfigError(f"{path}: no such file (copy deploy/celery/dagster.yaml there)")
    config = _load_yaml(path, "instance config")
    launcher = config.get("run_launcher") or {}
    if (launcher.get("module"), launcher.get("class")) not in CELERY_LAUNCHERS:
        found = f"{launcher.get('module')}.{launcher.get('class')}" if launcher else "none (Dagster's default)"
        raise WorkerConfigError(
            f"{path}: run_launcher is {found}, not a CeleryRunLauncher: no run would "
            "ever reach this worker (see deploy/celery/dagster.yaml)"
        )
    return path, config


def broker_urls(config_yaml: Path) -> tuple[str, str | None]:
    """Broker and backend of a worker config, from ``execution: config:`` (env values resolved)."""
    data = _load_yaml(config_yaml, "worker config")
    nested = (data.get("execution") or {}).get("config")
    if not isinstance(nested, dict):
        hint = " (found a flat file: move its keys under `execution: config:`)" if "broker" in data else ""
        raise WorkerConfigError(f"worker config {config_yaml}: no `execution: config:` section{hint}")
    try:
        resolved = resolve_env(nested, f"worker config {config_yaml} execution.config")
    except DeploymentUnreachable as exc:
        raise WorkerConfigError(str(exc)) from None
    broker = resolved.get("broker")
    if not broker:
        raise WorkerConfigError(f"worker config {config_yaml}: execution.config.broker is missing")
    return str(broker), resolved.get("backend")


def preflight(options: WorkerOptions, dagster_home: str | None) -> None:
    """Everything the worker needs, checked in seconds; raises ``WorkerConfigError`` naming what is wrong."""
    path, config = instance_config(dagster_home)
    broker, backend = broker_urls(options.config_yaml)
    try:
        check_celery_urls(broker, backend, f"worker config {options.config_yaml}")
        postgres_url = postgres_url_from_config(config.get("storage") or {}, str(path))
        if postgres_url:
            check_postgres(postgres_url, f"instance storage ({path} `storage`)")
    except DeploymentUnreachable as exc:
        raise WorkerConfigError(str(exc)) from None


def run_worker(options: WorkerOptions) -> int:
    """Start the worker and wait for it; SIGINT/SIGTERM (warm shutdown) and SIGQUIT (cold) are passed on."""
    process = subprocess.Popen(worker_command(options), env=worker_env(options), start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)}
    try:
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _wait_for_group(process.pid)
    return code


def _wait_for_group(pgid: int) -> None:
    """Celery outlives dagster-celery's wrapper process for its warm shutdown: wait, then kill what is left."""
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
