"""The CLI's own Dagster daemon: its command, and its start before the CLI imports Dagster.

On a machine where no deployment runs, a render through Dagster waits for the daemon the CLI starts: until the
daemon's code server has imported Dagster and the code location, no chunk run is launched. The CLI started that
daemon only once it had imported Dagster itself and read the daemon heartbeats (~1 s on the 2-core machine), one
start after the other. ``start_ahead`` starts it first thing instead, when the instance is local (SQLite under
DAGSTER_HOME, so a daemon serving it runs on this machine; not on a new DAGSTER_HOME, whose databases the CLI creates
first) and no daemon process of that DAGSTER_HOME runs here.

That daemon (``AHEAD_FLAG``) reads the heartbeats itself before Dagster's daemon starts, and stands down (exits
``STOOD_DOWN``, its code server stopped) when another daemon beats: one this process scan cannot see (in a
container sharing the folder, another user's) is never doubled. The CLI, which reads the same heartbeats, then
stops it and relies on the other.

This module imports no Dagster: it runs before Dagster is imported.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import psutil
import yaml

from helios_pipeline.dagster_defs.daemon import AHEAD_FLAG, daemon_command, handover_file
from helios_pipeline.dagster_defs.settings import PROJECT_ROOT, dagster_home
from helios_pipeline.processes import start_group, stop_group

LOG_NAME = "helios-daemon.log"
DAEMON_COMMAND_MARKS = ("helios_pipeline.dagster_defs.daemon", "dagster-daemon", "dagster._daemon", "dagster_daemon")
"""What a daemon process's command line holds: ours (``helios-pipeline ui`` and the CLI start it), Dagster's
``dagster-daemon run``, and what ``dagster dev`` starts."""
STORAGE_KEYS = ("storage", "run_storage", "event_log_storage", "schedule_storage")
"""An instance config with none of these keeps everything in SQLite databases under DAGSTER_HOME."""
SQLITE_DATABASES = ("history/runs.db", "history/runs/index.db", "schedules/schedules.db")
AHEAD_STOP_SECONDS = 20


def daemon_log() -> Path:
    return Path(os.environ["DAGSTER_HOME"]) / LOG_NAME


def start_daemon(ahead: bool = False) -> subprocess.Popen:
    """Start the CLI's own daemon in a session of its own, its output appended to ``helios-daemon.log``."""
    argv = ["run", "-w", str(PROJECT_ROOT / "workspace.yaml")]
    with daemon_log().open("ab") as stream:
        return start_group(
            daemon_command(*([AHEAD_FLAG, *argv] if ahead else argv), early_code_server_start=True),
            cwd=PROJECT_ROOT,
            stdout=stream,
            stderr=subprocess.STDOUT,
        )


def local_instance(home: Path) -> bool:
    """The instance keeps its runs in SQLite under DAGSTER_HOME (Dagster's default storage), and those databases
    exist: two processes creating them at once corrupt them (alembic's version table ends with two heads), so on a
    new DAGSTER_HOME the CLI creates them before it starts a daemon."""
    config_file = home / "dagster.yaml"
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    except (OSError, yaml.YAMLError):
        return False  # Dagster says what is wrong with it, once imported
    if not isinstance(config, Mapping) or any(key in config for key in STORAGE_KEYS):
        return False
    return all((home / database).is_file() for database in SQLITE_DATABASES)


def daemon_serving(home: Path) -> bool:
    """A daemon process of this DAGSTER_HOME runs on this machine (or one whose environment is not ours to read)."""
    return bool(daemon_processes(home))


def daemon_processes(home: Path) -> list[psutil.Process]:
    """The daemon processes of this DAGSTER_HOME on this machine, oldest first (another user's count too: its
    environment is not ours to read, and it may serve this instance)."""
    found = []
    for process in psutil.process_iter(["cmdline", "create_time"]):
        command = " ".join(process.info["cmdline"] or ())
        if not any(mark in command for mark in DAEMON_COMMAND_MARKS):
            continue
        try:
            their_home = process.environ().get("DAGSTER_HOME")
        except psutil.AccessDenied:
            found.append(process)
            continue
        except psutil.Error:
            continue
        with contextlib.suppress(OSError):
            if their_home and Path(their_home).resolve() == home:
                found.append(process)
    return sorted(found, key=lambda process: process.info["create_time"] or 0.0)


def start_ahead() -> subprocess.Popen | None:
    """The CLI's own daemon, started now if nothing else can be serving a local instance; else None (the CLI
    decides once it has read the heartbeats)."""
    home = dagster_home()
    if not local_instance(home) or daemon_serving(home):
        return None
    return start_daemon(ahead=True)


def stop_unless_adopted(ahead: subprocess.Popen | None) -> None:
    """Stop a daemon started ahead that the render did not take on (it failed before, or was interrupted): the
    render's own stop reaps the one it took on, and one handed over outlives the render (``hand_over``)."""
    if ahead is not None and ahead.returncode is None and ahead.pid not in _handed_over:
        stop_group(ahead, AHEAD_STOP_SECONDS)


_handed_over: set[int] = set()


def hand_over(daemon: subprocess.Popen) -> bool:
    """Tell the CLI's own daemon to outlive the CLI while other renders rely on it (``daemon.handover_file``);
    False if it is gone already."""
    if daemon.poll() is not None:
        return False
    handover_file(dagster_home(), daemon.pid).touch()
    _handed_over.add(daemon.pid)
    return True
