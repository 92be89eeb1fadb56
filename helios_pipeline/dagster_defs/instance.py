"""The Dagster instance the CLI works with, and the daemon it starts when none is running."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psutil

from helios_pipeline.dagster_defs.daemon import daemon_command
from helios_pipeline.dagster_defs.settings import PROJECT_ROOT

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
    dagster_home()
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
