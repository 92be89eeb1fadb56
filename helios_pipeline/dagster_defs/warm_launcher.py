"""Dagster's one-machine run launcher, with run workers forked from a warm process instead of started cold.

``DefaultRunLauncher`` asks the code server to start each run in a ``spawn``ed interpreter that
imports Dagster, its storages and the code location before the run's first event: about 2.5 s
on the 2-core machine, paid by every chunk run and again by the final run, one after the other
(``benchmarks/bench_dagster.py`` shows it as ``starting → started``). Here a fork server (Python's
``multiprocessing`` *forkserver*) imports Dagster and the renders' libraries once
(``run_worker``); each run is a fresh process forked from it, which imports only the project's
code location and runs ``dagster api execute_run``, the command Dagster's container launchers run.

Everything else is Dagster's own behaviour: the run queue launches the runs, the run worker
records every event, ``terminate`` marks the run CANCELING and interrupts its worker (SIGINT, as
Dagster's code server does), and a worker that dies without ending its run gets the run marked
FAILURE (so ``run_retries`` applies), as the code server does for its children. Configure it in
``dagster.yaml``: ``run_launcher: {module: helios_pipeline.dagster_defs.warm_launcher, class:
WarmRunLauncher}``. Runs are started on the daemon's machine, like ``DefaultRunLauncher``'s.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import setproctitle
import yaml

from helios_pipeline.dagster_defs import private_api
from helios_pipeline.dagster_defs.names import CHUNK_ASSET
from helios_pipeline.scratch import FORK_SERVER_PREFIX, socket_folder

PID_TAG = "helios/run_worker_pid"
HOST_TAG = "helios/run_worker_host"
WATCH_SECONDS = 1.0
"""How often the launcher looks for run workers that died without ending their run."""
PRELOAD_MODULE = "helios_pipeline.dagster_defs.run_worker"
WORKER_NAME_PREFIX = "dagster-run-"

_fork_server_lock = threading.Lock()
_fork_server: ForkServerContext | None = None


def fork_server() -> ForkServerContext:
    """This process's fork server context, preloading ``run_worker`` (one per process, started on first use)."""
    global _fork_server
    with _fork_server_lock:
        if _fork_server is None:
            _own_multiprocessing_folder()
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([PRELOAD_MODULE])
            _fork_server = context  # type: ignore[assignment]
        return _fork_server  # type: ignore[return-value]


def _own_multiprocessing_folder() -> None:
    """Give multiprocessing a temporary folder (the fork server's socket) that names this process: Python's own,
    ``pymp-*``, names none, so a daemon killed outright left it behind for good; this one is swept by the next
    process that makes one (``scratch.socket_folder``) or by the stop that killed it, and removed at exit as
    Python's is."""
    from multiprocessing import process, util

    config = process.current_process()._config  # where util.get_temp_dir keeps it: no public setter
    if config.get("tempdir") is None:
        folder = str(socket_folder(FORK_SERVER_PREFIX))
        util.Finalize(None, shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True}, exitpriority=-100)
        config["tempdir"] = folder


def configured(dagster_yaml: Path) -> bool:
    """Whether the instance config at ``dagster_yaml`` launches runs with this launcher."""
    try:
        config = yaml.safe_load(dagster_yaml.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return False
    launcher = config.get("run_launcher") or {}
    return launcher.get("module") == __name__ and launcher.get("class") == WarmRunLauncher.__name__


def warm_up() -> None:
    """Start the fork server now, so the first run does not wait for it.

    From a process that has imported Dagster already and runs one thread (the project's daemon, before Dagster's
    daemon starts its threads), the fork server is this process forked (``_forked_not_executed``): it has the
    preload almost for free (0.09 CPU-s on top of the daemon's imports, against 1.46 CPU-s for a fresh interpreter
    importing it all again beside the daemon, its code server and the CLI on 2 cores). Otherwise Python starts it,
    and it imports in the background.
    """
    from multiprocessing import forkserver

    fork_server()
    with _forked_not_executed() as forked:
        if forked:
            importlib.import_module(PRELOAD_MODULE)  # what the forked server then has already
        forkserver.ensure_running()


FORK_SERVER_TITLE = "helios-forks: multiprocessing.forkserver for the warm run workers of pid {pid}"
"""The forked fork server's command line as ``ps`` shows it (it would otherwise show the daemon's own); ``top``
shows ``FORK_SERVER_NAME``."""
FORK_SERVER_NAME = "helios-forks"
RUN_WORKER_TITLE = "helios-run-worker: dagster api execute_run {run_id}"
RUN_WORKER_NAME = "helios-run"


@contextlib.contextmanager
def _forked_not_executed() -> Iterator[bool]:
    """While in this block, Python's fork server is started by forking this process (True) instead of executing a new
    interpreter; False, and Python's own way, when this process runs more than one thread (a fork copies no other
    thread, and any lock one of them held stays held) or Python starts its fork server elsewhere."""
    from multiprocessing import util

    spawn = getattr(util, "spawnv_passfds", None)
    if spawn is None or not _one_thread():
        yield False
        return

    def fork_instead(path: str, args: list[str], passfds: Sequence[int]) -> int:
        program = args[-1]
        if args[-2:-1] != ["-c"] or "multiprocessing.forkserver import main" not in program or not _one_thread():
            return spawn(path, args, passfds)
        pid = os.fork()
        if pid == 0:
            _serve_forks(program, passfds)  # never returns
        return pid

    util.spawnv_passfds = fork_instead
    try:
        yield True
    finally:
        util.spawnv_passfds = spawn


def _one_thread() -> bool:
    return psutil.Process().num_threads() == 1  # the OS's count: threads of C libraries too


def _serve_forks(program: str, passfds: Sequence[int]) -> None:
    """In the forked child: keep only the descriptors the fork server is given (as the exec would), take the
    default signal dispositions and the free fork-server lock a new interpreter has (the parent forked while
    holding it), and run the fork server's program; exit when it ends."""
    from multiprocessing import forkserver

    code = 1
    try:
        forkserver._forkserver._lock = threading.Lock()
        keep = sorted({0, 1, 2, *passfds})
        for low, high in zip(keep, [*keep[1:], os.sysconf("SC_OPEN_MAX")], strict=True):
            os.closerange(low + 1, high)
        for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(number, signal.SIG_DFL)
        _set_title(FORK_SERVER_TITLE.format(pid=os.getppid()), FORK_SERVER_NAME)
        with contextlib.suppress(SystemExit):  # how it ends once no process holds its "alive" pipe
            exec(compile(program, "<fork server>", "exec"), {"__name__": "__fork_server__"})
        code = 0
    finally:
        os._exit(code)


def _set_title(title: str, name: str) -> None:
    """What ``ps`` shows as this process's command line, and ``top`` as its name."""
    setproctitle.setproctitle(title)
    setproctitle.setthreadtitle(name)


def _execute_in_worker(serialized_args: str, start_browser: bool) -> None:
    """The worker's body, imported from the preloaded module (it is in the fork server already)."""
    from helios_pipeline.dagster_defs import run_worker

    run_id = multiprocessing.current_process().name.removeprefix(WORKER_NAME_PREFIX)
    _set_title(RUN_WORKER_TITLE.format(run_id=run_id), RUN_WORKER_NAME)
    run_worker.execute(serialized_args, start_browser)


def _gone(process: multiprocessing.process.BaseProcess) -> bool:
    """The worker has exited. Asked of the process itself, not only of the fork server: a fork server that is
    stopped first (the whole group gets SIGTERM) reports every worker it forked as ended, while they are still
    winding their runs down."""
    if process.is_alive():
        return False
    try:
        return psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class WarmRunLauncher(dg.DefaultRunLauncher):
    """Launches each run in a process forked from a warm fork server (see the module's docstring)."""

    def __init__(self, inst_data: Any = None) -> None:
        super().__init__(inst_data=inst_data)
        self._workers: list[tuple[str, multiprocessing.process.BaseProcess]] = []  # (run id, its worker)
        self._workers_lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def launch_run(self, context: Any) -> None:
        run = context.dagster_run
        process = fork_server().Process(
            target=_execute_in_worker,
            args=(private_api.execute_run_args(self._instance, run), CHUNK_ASSET in (run.asset_selection or ())),
            name=f"{WORKER_NAME_PREFIX}{run.run_id}",
        )
        process.start()
        current = self._instance.get_run_by_id(run.run_id)
        if current is None or PID_TAG not in current.tags:  # a duplicate launch leaves the run to its first worker
            self._instance.add_run_tags(run.run_id, {PID_TAG: str(process.pid), HOST_TAG: socket.gethostname()})
        with self._workers_lock:
            self._workers.append((run.run_id, process))
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="warm-run-launcher-watch", daemon=True)
                self._watcher.start()

    def terminate(self, run_id: str) -> bool:
        """Mark the run CANCELING and interrupt its worker; the worker ends the run CANCELED."""
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        pid = run.tags.get(PID_TAG)
        if pid is None or run.tags.get(HOST_TAG) != socket.gethostname():
            self._instance.report_engine_event(
                "no run worker on this machine to interrupt (not started yet, or started elsewhere)",
                run,
                cls=self.__class__,
            )
            return False
        try:
            os.kill(int(pid), signal.SIGINT)
        except ProcessLookupError:
            return False
        return True

    def _watch(self) -> None:
        """A worker that died (killed, out of memory) without ending its run: its run FAILED, as code servers do.

        Only a worker that *failed* counts: one that exits 0 ended its run, or found the run already
        started by another launch and left it alone (Dagster's duplicate-launch guard), while the
        run goes on in the first worker.
        """
        while True:
            time.sleep(WATCH_SECONDS)
            with self._workers_lock:
                ended = [(run_id, process) for run_id, process in self._workers if _gone(process)]
                self._workers = [
                    (run_id, process) for run_id, process in self._workers if (run_id, process) not in ended
                ]
            for run_id, process in ended:
                exit_code = process.exitcode or 0
                process.close()  # its pipe to the fork server: a long-lived daemon must not collect one per run
                if exit_code == 0:
                    continue
                with contextlib.suppress(Exception):  # the watch must outlive a storage hiccup
                    run = self._instance.get_run_by_id(run_id)
                    if run is not None and not run.is_finished:
                        private_api.report_run_worker_died(self._instance, run, exit_code, self.__class__)
