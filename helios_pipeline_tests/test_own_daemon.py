"""The CLI's own daemon started ahead of the CLI's Dagster import, and when it stands down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from dagster._daemon.types import DaemonHeartbeat

from helios_pipeline.dagster_defs.daemon import STOOD_DOWN, handover_file
from helios_pipeline.dagster_defs.early_code_server import FOLDER_PREFIX
from helios_pipeline.dagster_defs.instance import REQUIRED_DAEMONS
from helios_pipeline.dagster_defs.own_daemon import daemon_serving, hand_over, local_instance, start_daemon
from helios_pipeline.dagster_defs.warm_launcher import FORK_SERVER_TITLE
from helios_pipeline.processes import process_tree, stop_group
from helios_pipeline.scratch import BROWSER_TEMP_PREFIX
from helios_pipeline_tests.helpers import REPO, open_instance, wait_for, write_instance_config


def test_an_instance_is_local_when_its_runs_are_kept_in_existing_sqlite_databases_under_dagster_home(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    write_instance_config(home)
    assert not local_instance(home), "a new DAGSTER_HOME: the CLI creates its databases before any daemon starts"
    open_instance(home).dispose()
    assert local_instance(home)
    config = home / "dagster.yaml"
    for storage in (
        {"storage": {"sqlite": {"base_dir": str(tmp_path / "elsewhere")}}},
        {"storage": {"postgres": {"postgres_url": "postgresql://db/dagster"}}},
        {"run_storage": {"module": "dagster_postgres", "class": "PostgresRunStorage"}},
    ):
        config.write_text(yaml.safe_dump(storage), encoding="utf-8")
        assert not local_instance(home), storage
    config.write_text("storage: [unclosed", encoding="utf-8")
    assert not local_instance(home), "a config Dagster will refuse: nothing is started ahead of it"


def test_a_daemon_process_is_found_by_its_dagster_home(tmp_path: Path) -> None:
    home, other = tmp_path / "home", tmp_path / "other"
    home.mkdir()
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "helios_pipeline.dagster_defs.daemon", "run"],
        env={**os.environ, "DAGSTER_HOME": str(home)},
    )
    try:
        wait_for(lambda: daemon_serving(home), 10, "the daemon-like process")
        assert not daemon_serving(other)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not daemon_serving(home)


def test_a_daemon_started_ahead_stands_down_when_another_daemon_beats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon this machine cannot see (a container sharing DAGSTER_HOME) beats: the daemon the CLI started ahead
    exits ``STOOD_DOWN`` before Dagster's daemon starts, with its code server, and writes no heartbeat."""
    home = tmp_path / "home"
    write_instance_config(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = open_instance(home)
    for kind in REQUIRED_DAEMONS:
        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time(), kind, "elsewhere", errors=[]))

    daemon = start_daemon(ahead=True)
    try:
        started = time.monotonic()
        code = daemon.wait(timeout=120)
    finally:
        stop_group(daemon, 10)
    log = (home / "helios-daemon.log").read_text(encoding="utf-8")
    assert code == STOOD_DOWN, log
    assert "daemon elsewhere beats on this instance: standing down" in log
    assert time.monotonic() - started < 60
    assert {beat.daemon_id for beat in instance.get_daemon_heartbeats().values()} == {"elsewhere"}
    assert not list(Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}{daemon.pid}-*")), "its code server's folder"
    assert not process_tree(daemon.pid)


def test_the_cli_starts_its_daemon_before_it_imports_dagster_and_not_beside_one_that_runs(tmp_path: Path) -> None:
    """``start_ahead`` in a process without Dagster: a daemon that runs a render's daemons once nothing else beats;
    asked again while that daemon runs, it starts none."""
    home = tmp_path / "home"
    write_instance_config(home)
    open_instance(home).dispose()  # databases made (``local_instance``)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    probe = (  # a CLI's first step; it then lives on until its stdin closes (its daemon stops once it is gone)
        "import json, sys\n"
        "from helios_pipeline.dagster_defs.own_daemon import start_ahead\n"
        "daemon = start_ahead()\n"
        "print(json.dumps({'pid': daemon and daemon.pid, 'dagster_imported': 'dagster' in sys.modules}), flush=True)\n"
        "sys.stdin.read()\n"
    )
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    first = subprocess.Popen([sys.executable, "-c", probe], env=env, cwd=REPO, **pipes)
    started = json.loads(first.stdout.readline())
    assert started["pid"] and not started["dagster_imported"]
    try:
        instance = open_instance(home)
        wait_for(lambda: set(instance.get_daemon_heartbeats()) >= REQUIRED_DAEMONS, 120, "the daemon's heartbeats")
        # its look at the heartbeats left it one thread: the warm launcher's fork server is the daemon forked
        titles = [" ".join(child.cmdline()).strip() for child in psutil.Process(started["pid"]).children()]
        assert titles.count(FORK_SERVER_TITLE.format(pid=started["pid"])) == 1, titles
        second = subprocess.run(
            [sys.executable, "-c", probe], env=env, cwd=REPO, input="", capture_output=True, text=True
        )
        assert json.loads(second.stdout)["pid"] is None, "a second daemon beside the running one"
    finally:
        os.killpg(started["pid"], 15)
        first.communicate()  # the starter ends (it never reaps the daemon: init does)
        wait_for(lambda: not process_tree(started["pid"]), 30, "the daemon's exit")


RUN_WORKER = """
import os, signal, sys, time
from helios_pipeline.scratch import BROWSER_TEMP_PREFIX, process_folder
folder = process_folder(BROWSER_TEMP_PREFIX)
(folder / "profile").mkdir()  # a browser's, that a stopping browser writes into while the worker removes it
def stop(*_):
    time.sleep(1.5)  # stopping its browser; its own removal of the folder loses the race to the browser's writes
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
print(folder, flush=True)
time.sleep(60)
"""
FORK_SERVER = f"""
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", {RUN_WORKER!r}])
time.sleep(60)
"""  # ends at once on SIGTERM (as the warm launcher's fork server and a code server do): its worker is re-parented
OWN_DAEMON = f"""
import os, signal, subprocess, sys, threading, time
from helios_pipeline.dagster_defs import daemon
cli_gone, signalled, stopped_runs = threading.Event(), [], []
server = subprocess.Popen([sys.executable, "-c", {FORK_SERVER!r}])
daemon._stop_when_the_cli_is_gone(os.getppid(), cli_gone, None, signalled, stopped_runs)
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopping.set())
print(os.getpid(), flush=True)
stopping.wait()
time.sleep(0.5)  # Dagster's daemon joins its threads before its CLI returns
daemon._finish_stop_without_the_cli(signalled, stopped_runs)
os._exit(0)
"""
CLI = f"""
import subprocess, sys, time
daemon = subprocess.Popen([sys.executable, "-c", {OWN_DAEMON!r}], start_new_session=True)
time.sleep(120)
"""


def test_a_daemon_whose_cli_is_gone_waits_for_re_parented_run_workers_before_it_sweeps_their_folders(
    tmp_path: Path,
) -> None:
    """The CLI killed outright, its daemon stops its group. The fork server (or code server) ends at once, and its
    run workers, re-parented, are still stopping their browsers: the daemon must wait for them (and kill them past
    the grace) before it removes the folders of what is gone, or their driver folders are left behind."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    env.pop("DAGSTER_HOME", None)
    cli = subprocess.Popen([sys.executable, "-c", CLI], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        folders = wait_for(lambda: list(scratch.glob(f"{BROWSER_TEMP_PREFIX}*")), 30, "the run worker's folder")
        (daemon,) = [child for child in psutil.Process(cli.pid).children() if child.cmdline()[1:2] == ["-c"]]
        worker = wait_for(
            lambda: [p for p in process_tree(daemon.pid) if "process_folder" in " ".join(p.cmdline())],
            10,
            "the run worker",
        )[0]
        cli.kill()
        cli.wait()
        wait_for(lambda: not process_tree(daemon.pid), 30, "the daemon's exit")
        assert not psutil.pid_exists(worker.pid) or worker.status() == psutil.STATUS_ZOMBIE
        assert not any(folder.exists() for folder in folders), sorted(scratch.rglob("*"))
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_a_daemon_whose_cli_is_gone_ends_the_runs_its_workers_left_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed after the stop's grace (or ended by the SIGTERM before it recorded its end) leaves its run
    STARTED, and once this daemon is gone nothing would ever end it: the stop ends it, CANCELED, saying why. A run
    that ended, or one this daemon's workers did not run, is left as it is."""
    import dagster as dg

    from helios_pipeline.dagster_defs import daemon

    home = tmp_path / "home"
    write_instance_config(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        left_open, ended, others = (
            instance.add_run(dg.DagsterRun(job_name="probe", run_id=run_id, status=status))
            for run_id, status in (
                ("left-open", dg.DagsterRunStatus.STARTED),
                ("ended", dg.DagsterRunStatus.SUCCESS),
                ("others", dg.DagsterRunStatus.STARTED),
            )
        )
    daemon._finish_stop_without_the_cli([], [left_open.run_id, ended.run_id])
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(left_open.run_id).status == dg.DagsterRunStatus.CANCELED
        assert instance.get_run_by_id(ended.run_id).status == dg.DagsterRunStatus.SUCCESS
        assert instance.get_run_by_id(others.run_id).status == dg.DagsterRunStatus.STARTED
        logs = [entry.message for entry in instance.all_logs(left_open.run_id)]
        assert any(daemon.CLI_GONE in message for message in logs), logs


def test_a_cli_hands_its_daemon_over_by_a_file_the_daemon_can_read_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hand-over is a file in DAGSTER_HOME named by the daemon's process id, there before the CLI exits: the
    daemon's thread that watches the CLI reads it as soon as it finds the CLI gone (a signal's handler would run
    only once Dagster's main thread woke from its 5 s sleep). A daemon already gone is not handed over."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert hand_over(daemon)
        assert handover_file(tmp_path / "home", daemon.pid).is_file()
    finally:
        daemon.kill()
        daemon.wait()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not hand_over(gone)
    assert not handover_file(tmp_path / "home", gone.pid).exists()
