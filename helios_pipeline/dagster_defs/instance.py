"""The Dagster instance the CLI works with, and the daemon it starts when none is running."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator

import dagster as dg

from helios_pipeline.dagster_defs import private_api
from helios_pipeline.dagster_defs.daemon import DAEMON_STOP_SECONDS, STOOD_DOWN
from helios_pipeline.dagster_defs.deployment_check import check_instance_config
from helios_pipeline.dagster_defs.own_daemon import daemon_log, daemon_serving, hand_over, start_daemon
from helios_pipeline.dagster_defs.settings import dagster_home
from helios_pipeline.engine.errors import RenderError
from helios_pipeline.processes import Stopping, begin_stop, stop_group
from helios_pipeline.scratch import remove_all_orphaned_folders

DAEMON_FRESH_SECONDS = 90
"""Dagster's daemons beat every 30 s: three beats missed means the daemon process is gone. Two were too few on
an overloaded machine (a load test saw a live daemon pass 60 s, and CLIs started second daemons that launched
the same runs twice)."""
REQUIRED_DAEMONS = {"BACKFILL", "QUEUED_RUN_COORDINATOR"}
"""The daemons every render needs: a deployment's daemon runs them, and so does the CLI's own (``RENDER_DAEMONS``),
which other CLIs' renders may then rely on while it beats."""
DAEMON_CHECK_SECONDS = 2.0  # how often a render relying on the deployment's daemon checks its heartbeats
DAEMON_RESTARTS = 2  # our daemon is started again this often when it exits; then the render fails
BEAT_OVERDUE_SECONDS = 45
"""Dagster's daemons beat every 30 s: a beat this old is late, and worth naming when a render stops moving."""
UNFINISHED_RUNS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
STARTING_DAEMON_SECONDS = 15.0
"""How long a render waits for a daemon process of its instance that has not beaten yet, before it starts its own."""


def get_instance() -> dg.DagsterInstance:
    """The instance of DAGSTER_HOME, once the servers its config names (Postgres, Redis) have answered.

    Raises ``DeploymentUnreachable`` naming the server and the failing call, within seconds.
    """
    home = dagster_home()
    check_instance_config(home / "dagster.yaml")
    private_api.reuse_sqlite_engines()  # the CLI follows a render with a few queries a second
    return dg.DagsterInstance.get()


def daemon_heartbeat_age(instance: dg.DagsterInstance) -> float | None:
    """Seconds since the daemon process last showed life: the *freshest* of the required daemons' beats (they
    are threads of one process, so one late thread on a busy machine is not a dead daemon; taking over from a
    live one would run a second daemon launching the same runs); None when one of them never beat."""
    heartbeats = instance.get_daemon_heartbeats()
    if not set(heartbeats) >= REQUIRED_DAEMONS:
        return None
    return time.time() - max(heartbeats[kind].timestamp for kind in REQUIRED_DAEMONS)


def newest_daemon_id(instance: dg.DagsterInstance) -> str | None:
    """The id of the daemon process that beat last (each ``dagster-daemon run`` has one), to name it."""
    heartbeats = list(instance.get_daemon_heartbeats().values())
    return max(heartbeats, key=lambda beat: beat.timestamp).daemon_id if heartbeats else None


def daemon_running(instance: dg.DagsterInstance) -> bool:
    """Every daemon a render needs beat within ``DAEMON_FRESH_SECONDS`` (a stopped one stops beating)."""
    age = daemon_heartbeat_age(instance)
    return age is not None and age < DAEMON_FRESH_SECONDS


class RenderDaemon:
    """The daemon one CLI render relies on: the deployment's while it keeps beating, else one of its own.

    A daemon that was stopped without wiping its heartbeats (a killed UI, a crashed deployment
    daemon) still looks alive for up to ``DAEMON_FRESH_SECONDS``; ``check`` notices when its
    heartbeats go stale mid-render and starts a daemon here, which picks the render's backfill up
    where it stands. Nothing waits on a daemon that is gone for more than that bound.
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        on_note: Callable[[str], None] | None = None,
        ahead: subprocess.Popen | None = None,
    ) -> None:
        self.instance = instance
        self.on_note = on_note or (lambda _message: None)
        self.process: subprocess.Popen | None = None
        self.ahead = ahead
        """Our daemon, started before this process imported Dagster (``own_daemon.start_ahead``), if it was."""
        self._exited: list[subprocess.Popen] = []
        self._stopping: Stopping | None = None
        self.handed_over = False
        self._next_check = 0.0

    @property
    def ours(self) -> bool:
        return self.process is not None

    def start_unless_alive(self) -> None:
        """Use the deployment's daemon while it beats (or another CLI's, still starting), else ours: the one started
        ahead, or one started now."""
        if self.process is not None:
            return
        if self.ahead is not None:
            # ours, unless it stands down (it reads the heartbeats before it starts Dagster's daemon; ``check`` then
            # relies on the other one). The beats this process reads may be its own already: on a loaded machine it
            # beat before this process had imported Dagster, which then stopped it and waited 90 s on the stale beat
            self.process = self.ahead
            return
        if daemon_running(self.instance):
            return
        if self._another_daemon_starts():
            return
        self.process = start_daemon()

    def _another_daemon_starts(self) -> bool:
        """Whether a daemon process of this DAGSTER_HOME that runs here (the other CLI's, started a moment ago)
        began to beat within ``STARTING_DAEMON_SECONDS``. Two daemons on one instance both act on the render's
        backfill: each launched its runs (two renders started at once got their final runs two and three times).
        The other CLI hands its daemon over when its render ends before ours (``hand_over``)."""
        deadline = time.monotonic() + STARTING_DAEMON_SECONDS
        while daemon_serving(dagster_home()):
            if daemon_running(self.instance):
                self.on_note("relying on the Dagster daemon another render started a moment ago on this instance")
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return False

    def check(self) -> None:
        """Called while following: take over from a deployment daemon whose heartbeats went stale, and start
        our daemon again if it exited (killed, out of memory): the render's backfill is picked up where it stands."""
        if self.process is not None:
            if self.process is self.ahead and self.process.poll() == STOOD_DOWN:
                # another daemon began to beat between its look at the heartbeats and ours: rely on that one
                self.process = None
                return
            if self.process.poll() is not None:
                if len(self._exited) >= DAEMON_RESTARTS:  # it exits for a reason of its own (config, workspace)
                    log = daemon_log()
                    raise RenderError(
                        f"this render's Dagster daemon exited {len(self._exited) + 1} times (last with code "
                        f"{self.process.returncode}); see {log}. Run the render again to resume it"
                    )
                self.on_note(
                    f"this render's Dagster daemon (pid {self.process.pid}) exited with code "
                    f"{self.process.returncode}; starting another (it picks the render's backfill up where it stands)"
                )
                self._exited.append(self.process)  # its code server and run workers are stopped with ours
                self.process = start_daemon()
            return
        if time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + DAEMON_CHECK_SECONDS
        age = daemon_heartbeat_age(self.instance)
        if age is not None and age < DAEMON_FRESH_SECONDS:
            return
        if self._another_daemon_starts():  # ours started ahead stood down for one that has not beaten yet
            return
        since = "never beat" if age is None else f"last beat {age:.0f} s ago"
        self.on_note(
            f"the deployment's Dagster daemon stopped heart-beating ({since}); "
            "starting one for this render (it picks the render's backfill up where it stands)"
        )
        self.process = start_daemon()

    def problem(self) -> str | None:
        """What is wrong with the daemon this render relies on, said when the render stops moving (None: it beats)."""
        if self.process is not None:
            code = self.process.poll()
            return None if code is None else f"this render's Dagster daemon (pid {self.process.pid}) exited ({code})"
        age = daemon_heartbeat_age(self.instance)
        home = os.environ.get("DAGSTER_HOME", "")
        if age is None:
            return (
                f"no Dagster daemon heart-beats on this instance (DAGSTER_HOME={home}): nothing launches the render's "
                "runs; start `helios-pipeline ui` (or the deployment's daemon) to resume it"
            )
        if age < BEAT_OVERDUE_SECONDS:
            return None
        return (
            f"the Dagster daemon this render relies on ({newest_daemon_id(self.instance)}) has not heart-beaten "
            f"for {age:.0f} s (it beats every 30 s): it looks stopped; this render starts its own once the beat is "
            f"{DAEMON_FRESH_SECONDS} s old, or start `helios-pipeline ui` (or the deployment's daemon) to resume it"
        )

    def hand_over(self) -> None:
        """Our daemon outlives this render: other renders on the instance rely on it (``daemon.handover_file``)."""
        if self.process is None or self.process.poll() is not None or self.handed_over:
            return
        if hand_over(self.process):
            self.handed_over = True
            self.on_note(
                f"this render's Dagster daemon (pid {self.process.pid}) goes on for the other renders on this "
                "instance, and stops once they have ended"
            )

    def begin_stop(self, grace: float) -> None:
        """Send our daemon's group (code server, run workers, Chromium, FFmpeg) SIGTERM; ``stop`` completes it."""
        if self.process is not None and self._stopping is None:
            self._stopping = begin_stop([*self._exited, self.process], grace)

    def stop(self, grace: float = DAEMON_STOP_SECONDS, while_waiting: Callable[[], None] | None = None) -> None:
        """Stop our daemon (if any, and not handed over) with everything it started, and wipe its heartbeats."""
        if self.process is None or self.handed_over:
            return
        self.begin_stop(grace)
        assert self._stopping is not None
        self._stopping.finish(while_waiting)
        remove_all_orphaned_folders()  # of what the stop had to kill: the browsers of its run workers
        self.instance.wipe_daemon_heartbeats()  # our daemon is gone: the next render must not count on it


def instance_idle(instance: dg.DagsterInstance) -> bool:
    """No backfill and no run is in progress on the instance."""
    if private_api.backfills_in_progress(instance):
        return False
    return not instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED_RUNS), limit=1)


@contextlib.contextmanager
def ensure_daemon(instance: dg.DagsterInstance) -> Iterator[subprocess.Popen | None]:
    """Use the deployment's daemon when one is alive, else run one for the duration of the block."""
    if daemon_running(instance):
        yield None
        return
    process = start_daemon()
    try:
        yield process
    finally:
        stop_process_tree(process)
        instance.wipe_daemon_heartbeats()  # our daemon is gone: the next render must not count on it


def stop_process_tree(process: subprocess.Popen, timeout: float = DAEMON_STOP_SECONDS) -> None:
    """Stop a daemon started in its own session and wait for everything it started to exit.

    SIGTERM goes to the daemon's process group (daemon, code server, run workers, FFmpeg); Chromium
    runs in a session of its own and exits when its chunk's process (its DevTools pipe) is gone.
    Whatever is still alive after ``timeout`` is killed, so a render never leaves processes behind (the
    code server outlives a SIGTERMed daemon for as long as a run is still executing in it).
    """
    stop_group(process, timeout)
