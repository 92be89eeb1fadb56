"""The Dagster instance the CLI works with, and the daemon it starts when none is running."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from helios_pipeline.dagster_defs.daemon import daemon_command
from helios_pipeline.dagster_defs.deployment_check import check_instance_config
from helios_pipeline.dagster_defs.settings import PROJECT_ROOT
from helios_pipeline.processes import start_group, stop_group

DEFAULT_HOME = PROJECT_ROOT / ".dagster_home"
DAEMON_FRESH_SECONDS = 60
REQUIRED_DAEMONS = {"SENSOR", "QUEUED_RUN_COORDINATOR", "ASSET"}
DAEMON_STOP_SECONDS = 20


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
    """The instance of DAGSTER_HOME, once the servers its config names (Postgres, Redis) have answered.

    Raises ``DeploymentUnreachable`` naming the server and the failing call, within seconds.
    """
    home = dagster_home()
    check_instance_config(home / "dagster.yaml")
    return dg.DagsterInstance.get()


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
        process = start_group(
            daemon_command("run", "-w", str(PROJECT_ROOT / "workspace.yaml")),
            cwd=PROJECT_ROOT,
            stdout=stream,
            stderr=subprocess.STDOUT,
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
    stop_group(process, timeout)
