"""The CLI's own daemon starts its code server before importing Dagster, and never leaves it behind."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import psutil
import pytest

from helios_pipeline.dagster_defs.daemon import RENDER_DAEMONS, daemon_command
from helios_pipeline.dagster_defs.early_code_server import FOLDER_PREFIX, SERVER_MODULE, ModuleEntry, module_entry
from helios_pipeline.dagster_defs.instance import REQUIRED_DAEMONS, stop_process_tree
from helios_pipeline.dagster_defs.private_api import workspace_location_names
from helios_pipeline.dagster_defs.sensors import composition_inbox
from helios_pipeline.dagster_defs.warm_launcher import FORK_SERVER_TITLE
from helios_pipeline_tests.helpers import (
    REPO,
    deployment_env,
    open_instance,
    running_daemon,
    sensor_ticks,
    wait_for,
    write_instance_config,
)

pytestmark = pytest.mark.slow
INBOX_SENSOR = composition_inbox.name


def test_the_repos_workspace_is_one_python_module_and_anything_else_is_left_to_dagster(tmp_path: Path) -> None:
    assert module_entry(REPO / "workspace.yaml") == ModuleEntry(
        "helios_pipeline.dagster_defs.definitions", "defs", ".", None
    )
    cases = {
        "two.yaml": "load_from:\n  - python_module: a\n  - python_module: b\n",
        "file.yaml": "load_from:\n  - python_file: defs.py\n",
        "grpc.yaml": "load_from:\n  - grpc_server: {host: localhost, port: 4266}\n",
        "env.yaml": "load_from:\n  - python_module: {module_name: a, executable_path: /opt/venv/bin/python}\n",
        "broken.yaml": "load_from: [python_module: {module_name: a\n",
        "empty.yaml": "",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        assert module_entry(tmp_path / name) is None, name
    assert module_entry(tmp_path / "missing.yaml") is None
    (tmp_path / "short.yaml").write_text("load_from:\n  - python_module: helios.defs\n", encoding="utf-8")
    assert module_entry(tmp_path / "short.yaml") == ModuleEntry("helios.defs", None, None, None)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def own_daemon(
    tmp_path: Path, workspace: Path, log: Path, sigint_ignored: bool = False
) -> Iterator[tuple[subprocess.Popen, dg.DagsterInstance]]:
    """The daemon as the CLI starts its own (``--early-code-server``), on a fresh instance; ``sigint_ignored``: as
    under `nohup ... &` or in the background of a script, which its children inherit."""
    home = tmp_path / "home"
    write_instance_config(home)
    instance = open_instance(home)
    env = deployment_env(home, tmp_path / "storage", tmp_path / "inbox")
    with log.open("ab") as stream:
        process = subprocess.Popen(
            daemon_command("run", "-w", str(workspace), early_code_server_start=True),
            cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_ignore_sigint if sigint_ignored else None,
        )  # fmt: skip
    try:
        yield process, instance
    finally:
        stop_process_tree(process)


def beating(instance: dg.DagsterInstance) -> bool:
    return set(instance.get_daemon_heartbeats()) >= REQUIRED_DAEMONS


def code_servers(daemon: subprocess.Popen) -> list[list[str]]:
    servers = []
    for child in psutil.Process(daemon.pid).children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.Error:
            continue
        if command[3:5] == ["api", "grpc"]:  # python -m dagster (Dagster's) or code_server (the early one)
            servers.append(command)
    return servers


def early_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"))


def test_the_own_daemon_serves_the_workspace_from_its_early_code_server_and_removes_it(tmp_path: Path) -> None:
    """One code server, the early one (no managed ``--lazy-load-user-code`` server), answering for the location
    the UI knows (the one the UI's daemon made the sensors' states under). The own daemon runs only what a render
    needs: no sensor, schedule or automation loop beats, and the inbox sensor does not tick while it runs."""
    expected = {"composition_inbox", "plan_registered_render", "render_automation"}
    home = tmp_path / "home"
    write_instance_config(home)
    instance = open_instance(home)
    env = deployment_env(home, tmp_path / "storage", tmp_path / "inbox")
    with running_daemon(env, tmp_path / "managed.log"):
        wait_for(lambda: {s.instigator_name for s in instance.all_instigator_state()} == expected, 120, "3 sensors")
        wait_for(lambda: len(sensor_ticks(instance, INBOX_SENSOR)) >= 6, 60, "six ticks of the inbox sensor")
    instance.wipe_daemon_heartbeats()
    times = sorted(tick.timestamp for tick in sensor_ticks(instance, INBOX_SENSOR))
    # HELIOS_TRIGGER_SECONDS=2, not Dagster's 5 s floor; and every 2 s round evaluates the sensor (its interval is 1 s):
    # with the interval as long as a round, a round that reached it a moment sooner skipped it (4 s gaps, one in two)
    assert max(b - a for a, b in itertools.pairwise(times)) < 3.6, times
    states = {state.selector_id for state in instance.all_instigator_state()}
    origins = {state.origin.repository_origin for state in instance.all_instigator_state()}
    (location,) = {origin.code_location_origin.location_name for origin in origins}
    ticks = len(sensor_ticks(instance, INBOX_SENSOR))
    render_daemons = set(RENDER_DAEMONS) & set(instance.get_required_daemon_types())
    assert {"BACKFILL", "QUEUED_RUN_COORDINATOR", "MONITORING"} <= render_daemons
    with own_daemon(tmp_path, REPO / "workspace.yaml", tmp_path / "daemon.log") as (daemon, instance):
        wait_for(lambda: beating(instance), 120, "the daemon's heartbeats")
        servers = code_servers(daemon)
        assert len(servers) == 1, servers
        assert "--lazy-load-user-code" not in servers[0]
        assert servers[0][1:3] == ["-m", SERVER_MODULE], servers  # Dagster and the code location imported frozen
        socket = Path(servers[0][servers[0].index("--socket") + 1])
        assert socket.parent.name.startswith(f"{FOLDER_PREFIX}{daemon.pid}-") and socket.is_socket()
        assert workspace_location_names(socket.parent / "workspace.yaml") == [location]
        # the warm launcher's fork server is the daemon forked, not an interpreter importing Dagster again
        titles = [" ".join(child.cmdline()).strip() for child in psutil.Process(daemon.pid).children()]
        assert titles.count(FORK_SERVER_TITLE.format(pid=daemon.pid)) == 1, titles
        time.sleep(3)  # every daemon thread starts at once: a sensor loop would have beaten and ticked by now
        assert set(instance.get_daemon_heartbeats()) == render_daemons
        assert len(sensor_ticks(instance, INBOX_SENSOR)) == ticks
        assert {state.selector_id for state in instance.all_instigator_state()} == states
    # its own folder (another test's dead daemon's folder may be swept meanwhile: compare only this one's)
    left = [folder for folder in early_folders() if folder.name.startswith(f"{FOLDER_PREFIX}{daemon.pid}-")]
    assert not left, "the socket folder is removed with the daemon"


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["", "sigint-ignored"])
def test_a_killed_own_daemon_takes_its_code_server_along_and_the_next_one_sweeps_the_socket(
    tmp_path: Path, sigint_ignored: bool
) -> None:
    """SIGKILL to the daemon process alone (an OOM kill): its early code server must not outlive it, also when
    the daemon was started ignoring SIGINT (Dagster's server takes SIGTERM as SIGINT); the socket folder it could
    not remove goes when the next own daemon starts."""
    log = tmp_path / "daemon.log"
    with own_daemon(tmp_path, REPO / "workspace.yaml", log, sigint_ignored) as (daemon, instance):
        wait_for(lambda: beating(instance), 120, "the daemon's heartbeats")
        server = psutil.Process(
            next(c.pid for c in psutil.Process(daemon.pid).children() if "grpc" in " ".join(c.cmdline()))
        )
        folder = next(f for f in early_folders() if f.name.startswith(f"{FOLDER_PREFIX}{daemon.pid}-"))
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(10)
        wait_for(lambda: not server.is_running() or server.status() == psutil.STATUS_ZOMBIE, 30, "the server's end")
        assert folder.exists()
    instance.wipe_daemon_heartbeats()
    with own_daemon(tmp_path, REPO / "workspace.yaml", tmp_path / "daemon2.log") as (daemon, instance):
        wait_for(lambda: not folder.exists(), 60, "the dead daemon's socket folder to be swept")
        wait_for(lambda: beating(instance), 120, "the second daemon's heartbeats")


def test_a_code_location_that_does_not_load_falls_back_to_dagsters_own_server(tmp_path: Path) -> None:
    """The early server exits (the module is missing): the daemon starts Dagster's managed server, which reports
    the load error the way Dagster does, and the daemon runs on."""
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text("load_from:\n  - python_module: helios_pipeline_no_such_module\n", encoding="utf-8")
    log = tmp_path / "daemon.log"
    folders_before = early_folders()
    with own_daemon(tmp_path, workspace, log) as (daemon, instance):
        wait_for(lambda: beating(instance), 180, "the daemon's heartbeats")
        servers = wait_for(lambda: code_servers(daemon), 60, "Dagster's managed code server")
        assert all("--lazy-load-user-code" in server for server in servers), servers
        assert early_folders() == folders_before, "the early server's folder went when it was given up"
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "early code server is not used (it exited with code" in text, text[-2000:]
    assert "helios_pipeline_no_such_module" in text
