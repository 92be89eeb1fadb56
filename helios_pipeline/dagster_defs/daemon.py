"""`dagster-daemon run` with a short backfill loop.

Dagster's backfill daemon wakes every 30 s (``DEFAULT_DAEMON_INTERVAL_SECONDS``, not an instance
setting), and an asset backfill advances one stage per wake-up: plan, then chunks, then concat +
mix. For a render that takes half a minute on one machine that wait dominated the wall time
(a 20 s render through a backfill took 4x the library's time). This entry point runs the stock
daemon with that loop shortened to ``HELIOS_BACKFILL_LOOP_SECONDS`` (default 0.5 s). A backfill is evaluated
only when it or its runs changed (``private_api.gate_backfill_iterations``), so a loop that finds nothing new
is three small queries on the instance's run storage; with SQLite the loop also goes round as soon as a run
storage write (a run ended) shows in ``runs.db`` (``private_api.wake_backfill_loop_on_run_changes``), and the run
queue launches what the backfill submits at once (``private_api.wake_run_queue_on_submit``).

The constant is read when the backfill loop starts, so setting it before the daemon's CLI runs
is enough. It is private Dagster API, pinned with dagster==1.13.27: if a Dagster upgrade
removes it, the daemon still runs, with Dagster's own 30 s loop, and says so.

    python -m helios_pipeline.dagster_defs.daemon run -w workspace.yaml
    python -m helios_pipeline.dagster_defs.daemon --early-code-server run -w workspace.yaml   # the CLI's own
    python -m helios_pipeline.dagster_defs.daemon --early-code-server --unless-another-daemon-beats run -w ...

With ``--early-code-server`` (the CLI's own, short-lived daemon) the code server starts before this
process imports Dagster (``early_code_server``). Dagster is imported only after that, in ``main``. That daemon
also runs only the daemons a render needs (``RENDER_DAEMONS``): it lives for one render and its process group is
stopped when the render ends, so a run that a sensor, a schedule or automation started from it would be cut off
half-way; and those loops' ticks (every 5 s, each evaluated in the code server) took CPU from the render's chunks.
Sensors, schedules and automation are the deployment's (``helios-pipeline ui``, or this module without the flag).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from helios_pipeline.dagster_defs import early_code_server
from helios_pipeline.dagster_defs.settings import DEFAULT_TRIGGER_SECONDS, env_number, trigger_seconds
from helios_pipeline.heap import long_lived_imports
from helios_pipeline.processes import end_within, process_tree, signal_group
from helios_pipeline.scratch import remove_all_orphaned_folders

DEFAULT_BACKFILL_LOOP_SECONDS = 0.5
BACKFILL_QUIET_SECONDS = 10.0
"""An unchanged backfill is evaluated again after this long (``private_api.gate_backfill_iterations``)."""
LOOP_SETTING = "HELIOS_BACKFILL_LOOP_SECONDS"
AHEAD_FLAG = "--unless-another-daemon-beats"
"""Given after ``--early-code-server`` to a daemon the CLI starts before it has read the heartbeats
(``own_daemon.start_ahead``): it reads them itself, before Dagster's daemon starts."""
WITH_PARENT_FLAG = "--stop-with-parent"
"""A daemon that lives as long as the process that started it (``helios-pipeline ui``), as the CLI's own does: see
``_stop_when_the_cli_is_gone``."""
HANDOVER_SUFFIX = ".handed-over"


def handover_file(home: Path, daemon_pid: int) -> Path:
    """Created by the CLI in its DAGSTER_HOME for its own daemon when its render is done while other renders on the
    instance rely on that daemon (they found it beating, and started none of their own): the daemon then outlives
    the CLI until no backfill or run is left in progress on the instance, instead of stopping with its group (their
    run workers included). A file, not a signal: a signal's Python handler runs in the daemon's main thread only,
    which Dagster keeps in 5 s sleeps, so the thread that watches the CLI could find it gone before the handler had
    run, and stopped the renders it had been handed (seen in tests: the other render's chunk run "terminated")."""
    return home / f"helios-daemon-{daemon_pid}{HANDOVER_SUFFIX}"


IDLE_POLL_SECONDS = 1.0
STOOD_DOWN = 3
"""The exit code of such a daemon that found another daemon beating (it started nothing)."""
PARENT_POLL_SECONDS = 0.5
"""How often the CLI's own daemon looks whether the CLI that started it is still there."""
DAEMON_STOP_SECONDS = 20
"""How long the CLI's own daemon's group gets to end on SIGTERM before what is left is killed, after a failed render."""
INTERRUPT_DAEMON_SECONDS = 4
"""The same for an abandoned render (an interrupted CLI, or one gone, for the daemon's own stop): its code server,
run workers, Chromium and FFmpeg get this long, inside a service manager's grace."""
CLI_GONE = "the CLI that started this daemon is gone"
"""Said on the runs the daemon's own stop had to end (``_finish_stop_without_the_cli``)."""
RENDER_DAEMONS = ("BACKFILL", "QUEUED_RUN_COORDINATOR", "MONITORING", "EVENT_LOG_CONSUMER")
"""What the CLI's own daemon runs (of what the instance enables): backfills, the run queue, run monitoring (a run
whose worker died ends FAILURE and frees its pool slot) and run retries."""


def backfill_loop_seconds() -> float:
    """The backfill loop interval from the environment; a clear error for a value out of 0.5..300 s."""
    return env_number(LOOP_SETTING, DEFAULT_BACKFILL_LOOP_SECONDS, 0.5, 300, unit="seconds")


def shorten_backfill_loop(seconds: float) -> bool:
    """Set the backfill daemon's loop interval for this process, evaluating a backfill only when one of its runs
    or its status changed (or every ``BACKFILL_QUIET_SECONDS``) and going round when a run storage write shows,
    and have the run queue launch what the backfill submits at once; False when this Dagster has no such knob."""
    from helios_pipeline.dagster_defs import private_api

    private_api.gate_backfill_iterations(BACKFILL_QUIET_SECONDS)
    private_api.check_backfill_targets_by_their_own_keys()
    private_api.wake_backfill_loop_on_run_changes()
    private_api.wake_run_queue_on_submit()
    return private_api.set_daemon_loop_interval(seconds)


def trigger_loop_seconds(trigger: int) -> float:
    """How often the deployment daemon's sensor and automation loops go round for sensors every ``trigger`` seconds:
    as often (Dagster's loops: every 5 s at most). The sensors' interval is a second shorter
    (``settings.sensor_interval_seconds``), so each round evaluates them. At 1 s, where a sensor's interval cannot
    be shorter, every half second."""
    return min(trigger, DEFAULT_TRIGGER_SECONDS) if trigger > 1 else 0.5


def daemon_command(*args: str, early_code_server_start: bool = False, stop_with_parent: bool = False) -> list[str]:
    """The command line that starts this daemon (what the CLI and `helios-pipeline ui` run); the CLI's own
    daemon starts its code server early (``early_code_server``); both stop when their starter is gone."""
    flags = [early_code_server.FLAG] if early_code_server_start else [WITH_PARENT_FLAG] if stop_with_parent else []
    return [sys.executable, "-m", "helios_pipeline.dagster_defs.daemon", *flags, *args]


def main(argv: list[str] | None = None) -> None:
    argv = list(argv if argv is not None else sys.argv[1:])
    try:
        seconds = backfill_loop_seconds()
        trigger = trigger_seconds()
    except ValueError as exc:
        sys.exit(f"helios-pipeline daemon: {exc}")
    own = argv[:1] == [early_code_server.FLAG]  # the CLI's own daemon
    with_parent = own or argv[:1] == [WITH_PARENT_FLAG]
    argv = argv[1:] if argv[:1] == [WITH_PARENT_FLAG] else argv
    early = None
    cli_gone = threading.Event()
    started_by = os.getppid()  # the CLI; read now, so that a CLI killed while this daemon starts is seen
    if own:
        argv = argv[1:]
        early = early_code_server.EarlyCodeServer.start(argv)  # before Dagster's imports: they overlap
    ahead = own and argv[:1] == [AHEAD_FLAG]
    argv = argv[1:] if ahead else argv
    _import_dagster_daemon()
    from helios_pipeline.dagster_defs import private_api, warm_launcher
    from helios_pipeline.dagster_defs.code_signature import PACKAGE, code_location_signature

    shorten_backfill_loop(seconds)
    private_api.reuse_sqlite_engines()
    private_api.refresh_workspace_when_changed(code_location_signature, PACKAGE.name)
    if ahead and (_another_daemon_beats() or _an_older_daemon_runs()):
        if early is not None:
            early.stop()
        _exit_now(STOOD_DOWN)
    if own:
        private_api.run_only_daemons(RENDER_DAEMONS)
    else:
        private_api.set_trigger_loop_floor(trigger_loop_seconds(trigger))
    home = os.environ.get("DAGSTER_HOME")
    if home and warm_launcher.configured(Path(home) / "dagster.yaml"):
        warm_launcher.warm_up()  # its imports overlap the daemon's start, not the first run's
    signalled: list = []  # the process tree below this one, as it was before the stop's SIGTERM
    stopped_runs: list[str] = []  # the runs whose workers were in that tree
    handover = handover_file(Path(home), os.getpid()) if own and home else None
    if handover is not None:
        handover.unlink(missing_ok=True)  # a killed daemon's, whose process id this one has now
    if with_parent:  # a thread: only now, as the fork server is this process forked only while it runs one thread
        _stop_when_the_cli_is_gone(started_by, cli_gone, handover, signalled, stopped_runs)
    try:
        private_api.run_daemon_cli(early.daemon_args(argv) if early is not None else argv)
    except SystemExit as exc:
        if not own or exc.code not in (0, None):
            raise
    finally:
        if early is not None:
            early.stop()
        if cli_gone.is_set():
            _finish_stop_without_the_cli(signalled, stopped_runs)
        if handover is not None:
            handover.unlink(missing_ok=True)
    if own:
        _exit_now()


def _import_dagster_daemon() -> None:
    """Import Dagster's daemon and what this entry point uses of it (~1.3 CPU-s) without the garbage collector's
    passes over it (``heap.long_lived_imports``: ~0.3 CPU-s less, at every start of the CLI's own daemon, while
    the CLI and the code server import Dagster on the same CPUs). The warm launcher's fork server, forked from
    this process, shares those pages with it too."""
    with long_lived_imports():
        from helios_pipeline.dagster_defs import private_api, warm_launcher  # noqa: F401
        from helios_pipeline.dagster_defs.code_signature import code_location_signature  # noqa: F401

        private_api.import_daemon()


def _stop_when_the_cli_is_gone(
    started_by: int, gone: threading.Event, handover: Path | None, signalled: list, stopped_runs: list[str]
) -> None:
    """The CLI's own daemon, and `helios-pipeline ui`'s (``WITH_PARENT_FLAG``), live as long as the CLI that
    started them. A CLI killed outright (SIGKILL, the out-of-memory killer) cannot stop its daemon, and in a
    session of its own that would run on, rendering for nobody: once this process's parent is another (it was
    re-parented), the daemon's group gets SIGTERM, as from the CLI's interrupt; what is left after
    ``INTERRUPT_DAEMON_SECONDS`` is killed, this process included. A CLI that handed its daemon over
    (``handover_file``) leaves it serving the instance's other renders: it stops once none is left. The tree
    below this process is noted in ``signalled`` before the SIGTERM (see ``_finish_stop_without_the_cli``)."""

    def watch() -> None:
        while os.getppid() == started_by:
            time.sleep(PARENT_POLL_SECONDS)
        if handover is not None and handover.exists():
            _say(f"the CLI that started it (pid {started_by}) handed it over: serving the instance's other renders")
            _wait_until_the_instance_is_idle()
            _say("no render is left in progress on this instance: stopping")
        else:
            _say(f"the CLI that started it (pid {started_by}) is gone: stopping")
        signalled.extend(process_tree(os.getpid())[1:])
        stopped_runs.extend(_run_ids(signalled))
        gone.set()
        signal_group(os.getpgrp(), signal.SIGTERM)
        signal_group(os.getpgrp(), signal.SIGCONT)  # as the CLI's stop: a stopped process acts once continued
        time.sleep(INTERRUPT_DAEMON_SECONDS + 5)  # the main thread normally ends the process long before
        signal_group(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="cli-watch", daemon=True).start()


def _say(message: str) -> None:
    print(f"helios-pipeline daemon: {message}", file=sys.stderr)
    sys.stderr.flush()


def _wait_until_the_instance_is_idle() -> None:
    """Until no backfill and no run is in progress on the instance (queued, starting, started or canceling)."""
    import dagster as dg

    from helios_pipeline.dagster_defs.instance import instance_idle

    with dg.DagsterInstance.get() as instance:
        while True:
            with contextlib.suppress(Exception):  # a storage hiccup: look again
                if instance_idle(instance):
                    return
            time.sleep(IDLE_POLL_SECONDS)


def _an_older_daemon_runs() -> bool:
    """Another daemon process of this DAGSTER_HOME, started before this one, runs here (another CLI's, started a
    moment earlier, that has not beaten yet): two daemons on one instance would both launch every backfill's runs."""
    import psutil

    from helios_pipeline.dagster_defs.own_daemon import daemon_processes
    from helios_pipeline.dagster_defs.settings import dagster_home

    me = psutil.Process()
    others = [process for process in daemon_processes(dagster_home()) if process.pid != me.pid]
    older = [process for process in others if process.info["create_time"] < me.create_time()]
    if older:
        _say(f"daemon process {older[0].pid} of this instance started before this one: standing down")
    return bool(older)


def _finish_stop_without_the_cli(signalled: list, stopped_runs: list[str]) -> None:
    """What the CLI's stop does after its SIGTERM: kill what outlived the grace, remove the folders of what is
    gone, end the runs whose workers ended without recording it (``stopped_runs``: killed after the grace, or
    ended by the SIGTERM before they could), and wipe the heartbeats, so that the next render does not count on
    this daemon: no daemon is left to notice those runs.

    What outlived it is looked for in ``signalled`` (the tree as it was before the SIGTERM), not only among this
    process's children now: a code server or fork server that ended at once left its run workers to another parent,
    and they may still be stopping their browser, which the folder sweep must wait for."""
    import dagster as dg
    import psutil

    end_within({*signalled, *psutil.Process().children(recursive=True)}, INTERRUPT_DAEMON_SECONDS)
    remove_all_orphaned_folders()  # what the killed ones (or those SIGTERM ended at once) kept in their folders
    with contextlib.suppress(Exception), dg.DagsterInstance.get() as instance:
        for run_id in stopped_runs:
            run = instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                instance.report_run_canceled(run, message=f"{CLI_GONE}: its worker ended without ending the run")
    with contextlib.suppress(Exception), dg.DagsterInstance.get() as instance:
        instance.wipe_daemon_heartbeats()


def _run_ids(processes: list) -> list[str]:
    """The runs of the run workers among ``processes`` (a worker's title ends with its run's id)."""
    import psutil

    from helios_pipeline.dagster_defs.warm_launcher import RUN_WORKER_TITLE

    prefix = RUN_WORKER_TITLE.format(run_id="")
    found = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            title = " ".join(process.cmdline())
            if title.startswith(prefix):
                found.append(title[len(prefix) :].split()[0])
    return found


def _another_daemon_beats() -> bool:
    """The daemons a render needs beat on this instance, from another daemon process (read as the CLI reads them)."""
    import dagster as dg

    from helios_pipeline.dagster_defs.instance import daemon_running, newest_daemon_id

    with dg.DagsterInstance.get() as instance:
        if not daemon_running(instance):
            return False
        print(
            f"helios-pipeline daemon: daemon {newest_daemon_id(instance)} beats on this instance: standing down",
            file=sys.stderr,
        )
        return True


def _exit_now(code: int = 0) -> None:
    """End the CLI's own daemon once Dagster's daemon has shut its threads down: nothing is left to save, and
    the interpreter's teardown (multiprocessing's exit handlers, freeing modules) took ~0.65 s that the CLI
    waited for at the end of every render. Of those handlers' work, one thing matters: multiprocessing's scratch
    folder (``pymp-*``, holding the warm launcher's fork-server socket) is removed here, or every render through
    the CLI left one in the temporary folder."""
    from multiprocessing import util

    shutil.rmtree(util.get_temp_dir(), ignore_errors=True)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
