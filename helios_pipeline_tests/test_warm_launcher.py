"""The warm launcher's fork server: forked from a daemon that has imported Dagster, else started by Python."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from helios_pipeline.dagster_defs.warm_launcher import FORK_SERVER_TITLE
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
