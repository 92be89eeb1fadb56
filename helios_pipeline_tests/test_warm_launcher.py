"""The warm launcher's fork server: forked from a daemon that has imported Dagster, else started by Python."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
import pytest

from helios_pipeline.dagster_defs.warm_launcher import FORK_SERVER_TITLE
from helios_pipeline.scratch import FORK_SERVER_PREFIX
from helios_pipeline_tests.helpers import REPO, wait_for

PROGRAM = """
import json, os, sys, threading, time
from multiprocessing import forkserver
import psutil
from helios_pipeline.dagster_defs import warm_launcher

if sys.argv[1] == "threads":  # a second thread: a fork would copy none of it, so Python starts the server
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
warm_launcher.warm_up()
server = psutil.Process(forkserver._forkserver._forkserver_pid)
worker = warm_launcher.fork_server().Process(target=os._exit, args=(7,))
worker.start()
worker.join(60)
print(json.dumps({"pid": server.pid, "parent": os.getpid(), "command": " ".join(server.cmdline()).strip(),
                  "exitcode": worker.exitcode}))
"""


@pytest.mark.parametrize("threads", ["one", "threads"])
def test_the_fork_server_is_the_process_forked_when_it_runs_one_thread(threads: str) -> None:
    """One thread: the fork server is this process forked (its title names the parent), with nothing to import
    again. More threads: Python executes its own fork server, as before. Either way it forks run workers, and it
    ends with the process that started it."""
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, threads], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    started = json.loads(result.stdout.splitlines()[-1])
    assert started["exitcode"] == 7, result.stderr
    forked = started["command"] == FORK_SERVER_TITLE.format(pid=started["parent"])
    assert forked == (threads == "one"), started["command"]
    assert "multiprocessing.forkserver" in started["command"]
    wait_for(lambda: not psutil.pid_exists(started["pid"]), 30, "the fork server to end with its parent")


KILLED = """
import os, sys, time
from multiprocessing import util
from helios_pipeline.dagster_defs import warm_launcher
warm_launcher.warm_up()
print(util.get_temp_dir(), flush=True)
if sys.argv[1] == "killed":
    time.sleep(60)
"""


def test_the_fork_servers_socket_folder_names_its_owner_and_a_killed_ones_is_swept() -> None:
    """Python's multiprocessing folder (the fork server's socket), ``pymp-*``, named no owner: a daemon killed
    outright left it in the temporary folder for good. It names the process now; the next process that warms a
    fork server up sweeps a killed one's, and one that exits removes its own."""
    scratch = Path(tempfile.mkdtemp(prefix="helios-t-"))  # short: a socket's path must stay under 108 bytes
    pipes: dict[str, Any] = {"cwd": REPO, "env": {**os.environ, "TMPDIR": str(scratch)}, "stdout": subprocess.PIPE}
    try:
        killed = subprocess.Popen([sys.executable, "-c", KILLED, "killed"], start_new_session=True, text=True, **pipes)
        assert killed.stdout is not None
        folder = Path(killed.stdout.readline().strip())
        os.killpg(killed.pid, signal.SIGKILL)  # the process and its fork server
        killed.wait()
        assert folder.parent == scratch and folder.name.startswith(f"{FORK_SERVER_PREFIX}{killed.pid}-"), folder
        assert folder.exists(), "nothing removed the killed process's folder (or this test would prove nothing)"
        second = subprocess.run([sys.executable, "-c", KILLED, "exits"], timeout=120, check=True, text=True, **pipes)
        assert Path(second.stdout.strip()).name.startswith(f"{FORK_SERVER_PREFIX}"), second.stdout
        assert not list(scratch.iterdir()), "the killed one's folder is swept, and the second removed its own"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


COLLECTED = """
import gc, json, sys, threading, time
from helios_pipeline.dagster_defs import warm_launcher


def private_dirty_kb() -> int:
    with open("/proc/self/smaps_rollup") as rollup:
        return next(int(line.split()[1]) for line in rollup if line.startswith("Private_Dirty:"))


def collect(conn) -> None:
    before = private_dirty_kb()
    gc.collect()
    conn.send({"copied_kb": private_dirty_kb() - before, "frozen": gc.get_freeze_count()})


if __name__ == "__main__":
    if sys.argv[1] == "threads":  # Python's own fork server, which imports the preload itself
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    warm_launcher.warm_up()
    context = warm_launcher.fork_server()
    ours, theirs = context.Pipe()
    worker = context.Process(target=collect, args=(theirs,))
    worker.start()
    print(json.dumps(ours.recv()))
    worker.join(60)
"""


@pytest.mark.parametrize("threads", ["one", "threads"])
def test_a_run_worker_shares_the_fork_servers_memory_through_a_full_collection(threads: str) -> None:
    """A forked run worker inherits the fork server's Python objects (Dagster, its storages, Playwright): ~200,000
    of them. A full collection in the worker wrote to each one's header, which copied ~50 MB of shared pages into
    the worker, for every run. The preload freezes them, so the collector leaves them (and their pages) alone."""
    script = Path(tempfile.mkdtemp(prefix="helios-t-")) / "collected.py"  # run as a file: Python's fork server
    try:  # re-imports the main module to find ``collect``
        script.write_text(COLLECTED, encoding="utf-8")
        result = subprocess.run(
            [sys.executable, str(script), threads], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
        )
    finally:
        shutil.rmtree(script.parent, ignore_errors=True)
    collected = json.loads(result.stdout.splitlines()[-1])
    assert collected["frozen"] > 100_000, collected
    assert collected["copied_kb"] < 8 * 1024, f"a full collection copied {collected['copied_kb']} kB into the worker"
