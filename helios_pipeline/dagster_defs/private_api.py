"""Every use of Dagster's private API, in one place (pinned with dagster==1.13.27).

Dagster has no public API for creating or cancelling asset backfills from Python (the UI does it
over GraphQL) nor for the daemon's loop interval. An upgrade that moves these touches this file
only; ``test_dagster_daemon_loop.py`` and the backfill tests fail here first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager
from sqlalchemy.pool import NullPool


def _not_applied(message: str) -> bool:
    """Say what this Dagster lacks for a patch below and what happens instead; the patch is left out (False)."""
    logging.getLogger("helios_pipeline").warning(message)
    return False


def set_daemon_loop_interval(seconds: float) -> bool:
    """Set the daemon's loop interval (backfills advance one stage per loop); False when Dagster lacks it."""
    from dagster._daemon import controller

    if not isinstance(getattr(controller, "DEFAULT_DAEMON_INTERVAL_SECONDS", None), int | float):
        return _not_applied(
            "this Dagster version has no DEFAULT_DAEMON_INTERVAL_SECONDS: backfills advance on Dagster's own loop"
        )
    controller.DEFAULT_DAEMON_INTERVAL_SECONDS = seconds  # type: ignore[assignment]
    return True


def backfill_activity(instance: dg.DagsterInstance) -> tuple[Any, ...]:
    """What the next iteration of the backfill loop depends on: the unfinished backfills with their status, and
    how many runs they have launched and how many of those ended. Equal twice: the iteration would find nothing new.

    Counts only (no run records): ``get_run_records`` inspects the runs table's columns on every call.
    """
    from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus
    from dagster._core.storage.dagster_run import FINISHED_STATUSES
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    unfinished = (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING)
    backfills = instance.get_backfills(filters=BulkActionsFilter(statuses=list(unfinished)))
    if not backfills:
        return ()
    states = tuple(sorted((backfill.backfill_id, backfill.status.value) for backfill in backfills))
    tags = {BACKFILL_ID_TAG: [backfill_id for backfill_id, _ in states]}
    launched = instance.get_runs_count(filters=dg.RunsFilter(tags=tags))
    ended = instance.get_runs_count(filters=dg.RunsFilter(tags=tags, statuses=list(FINISHED_STATUSES)))
    return states, launched, ended


def gate_backfill_iterations(quiet_seconds: float) -> bool:
    """Let the backfill loop evaluate the backfills only when ``backfill_activity`` changed, or at least every
    ``quiet_seconds``; False when this Dagster's loop is not where it was.

    With a short loop the daemon re-evaluated every unfinished asset backfill every round, each time loading its
    asset graph and partition status: the busiest of the daemon's threads during a render, on the CPU the chunks
    beside it render with, and growing with every render in flight. A render's backfill can only advance when
    one of its runs ends or a run is added (a retry), or the backfill changes (cancelled, added), which the check
    above sees with three small queries; on SQLite those are skipped too while no other connection has committed
    to the run storage since the last round (``RunStorageWatch``). The time limit covers what it does not see (a
    retryable error of the last evaluation, partitions materialised outside backfills).
    """
    from dagster._daemon import backfill as backfill_daemon

    iterate = getattr(backfill_daemon, "execute_backfill_iteration", None)
    if iterate is None or not hasattr(backfill_daemon, "execute_backfill_iteration_loop"):
        return _not_applied(
            "this Dagster's backfill loop has no execute_backfill_iteration: backfills are evaluated on every loop"
        )
    if getattr(iterate, "helios_gated", False):
        return True
    last: dict[str, Any] = {"activity": None, "at": 0.0, "watch": None}

    def gated(workspace_process_context: Any, logger: Any, *args: Any, **kwargs: Any) -> Any:
        futures = kwargs.get("backfill_futures") or {}
        if any(not future.done() for future in futures.values()):  # an evaluation in flight: Dagster waits for it
            yield from iterate(workspace_process_context, logger, *args, **kwargs)
            return
        now = time.monotonic()
        instance = workspace_process_context.instance
        watch = last["watch"]
        if watch is None or watch.instance is not instance:
            watch = last["watch"] = RunStorageWatch(instance)
        # nothing committed to a SQLite run storage since the last round: no backfill and no run changed, so the
        # counts below would be the same (a round of a render in progress was three queries twice a second)
        unwritten = watch.applies and not watch.changed()
        if unwritten and last["activity"] is not None and now - last["at"] < quiet_seconds:
            yield None
            return
        try:
            activity = backfill_activity(instance)
        except Exception:  # the storage hiccuped: let Dagster's own iteration meet (and report) it
            activity = None
        if activity is not None and activity == last["activity"] and now - last["at"] < quiet_seconds:
            yield None
            return
        last.update(activity=activity, at=now)  # taken before the evaluation: a change during it is seen next time
        yield from iterate(workspace_process_context, logger, *args, **kwargs)

    gated.helios_gated = True  # type: ignore[attr-defined]
    backfill_daemon.execute_backfill_iteration = gated
    return True


WATCH_SECONDS = 0.05
"""How often a loop waiting for its next round looks (``_between_rounds``): the backfill loop at the run storage
(``RunStorageWatch``: one ``PRAGMA data_version``), both loops at the shutdown they must not hold up."""
HEARTBEAT_YIELD_SECONDS = 0.5
"""A waiting loop yields this often, as Dagster's own loops do: the daemon's heartbeat comes as often."""


def _between_rounds(
    started: float, interval: float, shutdown_event: threading.Event, woken: Callable[[float], bool]
) -> Iterator[None]:
    """Wait for a daemon loop's next round: until ``interval`` after ``started``, the daemon's shutdown, or
    ``woken`` (called with at most ``WATCH_SECONDS`` to wait) says to go round early."""
    beat = time.monotonic()
    while (left := interval - (time.monotonic() - started)) > 0 and not shutdown_event.is_set():
        if woken(min(WATCH_SECONDS, left)):
            return
        if time.monotonic() - beat >= HEARTBEAT_YIELD_SECONDS:
            beat = time.monotonic()
            yield None


_RUN_QUEUE_WAKE = threading.Event()
"""Set when this process enqueues a run: the run queue's loop (``wake_run_queue_on_submit``) goes round at once."""


def wake_run_queue_on_submit() -> bool:
    """Dequeue a run as soon as this process has enqueued it, instead of at the queue loop's next round; False
    when this Dagster's queue is not where it was.

    The daemon's backfill loop submits a render's runs, and the queue loop (a thread of the same daemon) launched
    them at its next round: it goes round every ``dequeue_interval_seconds`` (an int, so 1 s at best) in 0.5 s
    waits, which cost a render ~0.5-0.7 s at each stage (chunks, then the final run). Here the queue's submit sets
    an event the loop waits on between rounds; the loop is otherwise Dagster's, interval included.
    """
    from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
    from dagster._daemon.daemon import SpanMarker
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
    from dagster._utils.error import serializable_error_info_from_exc_info

    if not hasattr(QueuedRunCoordinatorDaemon, "run_iteration") or not hasattr(QueuedRunCoordinator, "submit_run"):
        return _not_applied(
            "this Dagster's run queue has no run_iteration/submit_run: runs are dequeued on Dagster's own loop"
        )
    if getattr(QueuedRunCoordinator.submit_run, "helios_wakes", False):
        return True
    submit = QueuedRunCoordinator.submit_run

    def submit_and_wake(self: Any, context: Any) -> Any:
        run = submit(self, context)
        _RUN_QUEUE_WAKE.set()
        return run

    def core_loop(self: Any, workspace_process_context: Any, shutdown_event: threading.Event) -> Any:
        while True:
            started = time.monotonic()
            _RUN_QUEUE_WAKE.clear()  # before the round: a run enqueued during it wakes the next one
            yield SpanMarker.START_SPAN
            try:
                yield from self.run_iteration(workspace_process_context)
            except Exception:
                error_info = serializable_error_info_from_exc_info(sys.exc_info())
                self._logger.error("Caught error:\n%s", error_info)
                yield error_info
            yield SpanMarker.END_SPAN
            yield from _between_rounds(started, self.interval_seconds, shutdown_event, _RUN_QUEUE_WAKE.wait)
            yield None

    submit_and_wake.helios_wakes = True  # type: ignore[attr-defined]
    QueuedRunCoordinator.submit_run = submit_and_wake  # type: ignore[method-assign]
    QueuedRunCoordinatorDaemon.core_loop = core_loop  # type: ignore[method-assign]
    return True


class RunStorageWatch:
    """Tells whether the instance's SQLite run storage was written by another connection since it last looked: a
    run created, a run's status changed (a chunk run succeeded), a backfill updated. It asks SQLite itself
    (``PRAGMA data_version`` on a connection of its own that only reads), which counts every commit of every
    other connection, in this process or another (file sizes and modification times, which it read before, can
    only suggest a commit). ``changed`` is always False for other storages (Postgres): nothing to ask cheaply."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage

        self.instance = instance
        storage = instance.run_storage
        url = getattr(storage, "_conn_string", None) if isinstance(storage, SqliteRunStorage) else None
        self.database = (
            Path(url.removeprefix("sqlite:///")) if isinstance(url, str) and url.startswith("sqlite:///") else None
        )
        self._connection: sqlite3.Connection | None = None
        self.last = self._version()

    @property
    def applies(self) -> bool:
        """Whether ``changed`` can tell anything (a SQLite run storage)."""
        return self.database is not None

    def _version(self) -> int | None:
        if self.database is None:
            return None
        try:
            if self._connection is None:  # opened on first use, in the thread that watches; never creates the file
                uri = f"{self.database.resolve().as_uri()}?mode=rw"
                self._connection = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            return self._connection.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:  # the file is gone or locked for a moment: count it as a change, look again next time
            self.close()
            return None

    def changed(self) -> bool:
        version = self._version()
        changed, self.last = version != self.last or version is None, version
        return changed and self.applies

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def wake_backfill_loop_on_run_changes() -> bool:
    """Have the backfill loop go round as soon as the run storage is written (a SQLite instance), not only at its
    interval; False when this Dagster's backfill loop is not where it was.

    The loop waited out its interval (0.5 s) after each round, so each stage of a render (chunks after the plan,
    the final run after the last chunk, the backfill's end after the final run) waited ~0.25 s on average for it.
    Run ends are written to ``runs.db`` by the run workers, other processes: the waiting loop now asks SQLite whether
    another connection committed (``RunStorageWatch``) every ``WATCH_SECONDS`` and goes round when one did. The round
    is ``gate_backfill_iterations``' (nothing when nothing was committed, three counts when nothing moved). With
    Postgres the loop keeps its interval.
    """
    from dagster._daemon import backfill as backfill_daemon
    from dagster._daemon import controller
    from dagster._daemon.daemon import BackfillDaemon, SpanMarker
    from dagster._daemon.utils import DaemonErrorCapture

    if not hasattr(backfill_daemon, "execute_backfill_iteration") or not hasattr(BackfillDaemon, "core_loop"):
        return _not_applied(
            "this Dagster's backfill loop has no execute_backfill_iteration: it goes round on its interval only"
        )
    if getattr(BackfillDaemon.core_loop, "helios_wakes", False):
        return True

    def core_loop(self: Any, workspace_process_context: Any, shutdown_event: threading.Event) -> Any:
        watch = RunStorageWatch(workspace_process_context.instance)
        futures: dict[str, Any] = {}
        try:
            while True:
                started = time.monotonic()
                yield SpanMarker.START_SPAN
                try:
                    yield from backfill_daemon.execute_backfill_iteration(
                        workspace_process_context,
                        self._logger,
                        threadpool_executor=self._threadpool_executor,
                        backfill_futures=futures,
                        submit_threadpool_executor=self._submit_threadpool_executor,
                    )
                except Exception:
                    yield DaemonErrorCapture.process_exception(
                        exc_info=sys.exc_info(), logger=self._logger, log_message="BackfillDaemon caught an error"
                    )
                yield SpanMarker.END_SPAN
                yield from _between_rounds(
                    started,
                    controller.DEFAULT_DAEMON_INTERVAL_SECONDS,
                    shutdown_event,
                    lambda seconds: watch.changed() or shutdown_event.wait(seconds),
                )
                yield None
        finally:
            watch.close()

    core_loop.helios_wakes = True  # type: ignore[attr-defined]
    BackfillDaemon.core_loop = core_loop  # type: ignore[method-assign]
    return True


def run_only_daemons(kinds: Sequence[str]) -> bool:
    """Have a ``dagster-daemon run`` in this process run only the daemons named in ``kinds`` (Dagster's daemon types,
    such as ``BACKFILL``) of those the instance requires; False when this Dagster decides that elsewhere.

    The controller starts, and checks the heartbeats of, the types ``get_required_daemon_types`` lists.
    """
    from dagster._core.instance.methods.daemon_methods import DaemonMethods

    required = getattr(DaemonMethods, "get_required_daemon_types", None)
    if required is None or not issubclass(dg.DagsterInstance, DaemonMethods):
        return _not_applied("this Dagster's instance has no get_required_daemon_types: its daemon runs every daemon")
    original = getattr(required, "helios_original", required)
    wanted = frozenset(kinds)

    def only_these(self: Any) -> Sequence[str]:
        return [kind for kind in original(self) if kind in wanted]

    only_these.helios_original = original  # type: ignore[attr-defined]
    DaemonMethods.get_required_daemon_types = only_these  # type: ignore[method-assign]
    return True


def set_trigger_loop_floor(seconds: float) -> bool:
    """Let Dagster's sensor and automation loops go round every ``seconds`` (Dagster's floor is 5 s), so sensors
    with a shorter ``minimum_interval_seconds`` tick that often; False when this Dagster keeps the floor elsewhere."""
    from dagster._daemon import asset_daemon, sensor

    floors = ((sensor, "MIN_INTERVAL_LOOP_TIME"), (asset_daemon, "MIN_INTERVAL_LOOP_SECONDS"))
    if not all(isinstance(getattr(module, name, None), int | float) for module, name in floors):
        return _not_applied(
            "this Dagster has no MIN_INTERVAL_LOOP_TIME/MIN_INTERVAL_LOOP_SECONDS: sensors tick at most every 5 s"
        )
    for module, name in floors:
        setattr(module, name, seconds)
    return True


def refresh_workspace_when_changed(signature: Callable[[], Hashable], package: str) -> bool:
    """Have the daemon's periodic workspace refresh (Dagster's, every ``RELOAD_WORKSPACE_INTERVAL``: 60 s) start new
    code servers only when ``signature()`` changed since the daemon started or last refreshed; False when this
    Dagster refreshes elsewhere.

    Dagster's refresh drops every code server the daemon manages and starts new ones, so that edited code shows.
    The refresh is skipped only while it could change nothing: every location of the workspace file is code of
    ``package`` (which ``signature`` covers) served by a code server the daemon manages, the workspace file still
    names the same locations, none failed to load, and every server still runs. Otherwise Dagster's refresh runs
    as before: other code, a changed workspace, a load error to retry, a server that exited.
    """
    from dagster._daemon import controller

    try:
        from dagster._core.remote_origin import ManagedGrpcPythonEnvCodeLocationOrigin
        from dagster._core.remote_representation.grpc_server_registry import ServerRegistryEntry
    except ImportError:
        ManagedGrpcPythonEnvCodeLocationOrigin = ServerRegistryEntry = None
    daemon_controller = controller.DagsterDaemonController
    method = getattr(daemon_controller, "check_workspace_freshness", None)
    interval = getattr(controller, "RELOAD_WORKSPACE_INTERVAL", None)
    if method is None or ServerRegistryEntry is None or not isinstance(interval, int | float):
        return _not_applied(
            "this Dagster's daemon has no check_workspace_freshness: it starts new code servers every minute"
        )
    original = getattr(method, "helios_original", method)

    def taken() -> Hashable:
        try:
            return signature()
        except Exception:  # unreadable: count it as changed (Dagster's refresh), never stop the daemon's loop
            return object()

    last_seen = [taken()]  # the code as the daemon's first load of the workspace (after this) finds it

    def unchanged(self: Any, current: Hashable) -> bool:
        try:
            return current == last_seen[0] and serves_what_it_loaded(self)
        except Exception:  # a Dagster that holds these otherwise: its own refresh
            return False

    def serves_what_it_loaded(self: Any) -> bool:
        context = self._workspace_process_context
        registry = self._grpc_server_registry
        target = context.workspace_load_target
        origins = target.create_origins() if target is not None else []
        entries = context.get_current_workspace().code_location_entries
        if registry is None or not origins or {origin.location_name for origin in origins} != set(entries):
            return False
        for origin in origins:
            if not isinstance(origin, ManagedGrpcPythonEnvCodeLocationOrigin):
                return False
            module = origin.loadable_target_origin.module_name or origin.loadable_target_origin.package_name or ""
            entry = entries[origin.location_name]
            if module.split(".")[0] != package or entry.load_error is not None or entry.origin != origin:
                return False
            server = registry._active_entries.get(origin.get_id())  # not get_grpc_server_entry: it would start one
            if not isinstance(server, ServerRegistryEntry) or server.process.server_process.poll() is not None:
                return False
        return True

    def check_workspace_freshness(self: Any, last_workspace_update_time: float) -> float:
        now = time.time()
        if now - last_workspace_update_time <= controller.RELOAD_WORKSPACE_INTERVAL:
            return last_workspace_update_time
        current = taken()  # before the refresh: an edit made while it runs shows at the next one
        if unchanged(self, current):
            return now
        refreshed = original(self, last_workspace_update_time)
        if refreshed != last_workspace_update_time:  # Dagster keeps the old time when its refresh failed
            last_seen[0] = current
        return refreshed

    check_workspace_freshness.helios_original = original  # type: ignore[attr-defined]
    daemon_controller.check_workspace_freshness = check_workspace_freshness  # type: ignore[method-assign]
    return True


def check_backfill_targets_by_their_own_keys() -> bool:
    """Have the backfill daemon check that a backfill's target partitions still exist by asking about those keys
    only; False when this Dagster checks them elsewhere.

    Dagster checks this at every iteration of every asset backfill in progress by building the partitions
    definition's whole subset (``subset_with_all_partitions``): every render key ever added, times every chunk key,
    for the chunk asset. With 10,000 past renders that took ~0.3 s of the daemon's CPU per iteration (~0.8 s per
    render, beside its chunks) and grew with every render. For a definition with a dynamic dimension this asks the
    storage about the target's keys (``filter_valid_partition_keys``, Dagster's own batched lookup); any other
    definition keeps Dagster's check. A removed partition still fails the backfill with Dagster's error.
    """
    from dagster._core.definitions.partitions.context import partition_loading_context
    from dagster._core.definitions.partitions.subset.all import AllPartitionsSubset
    from dagster._core.errors import DagsterDefinitionChangedDeserializationError
    from dagster._core.execution import asset_backfill

    original = getattr(asset_backfill, "_check_target_partitions_subset_is_valid", None)
    if original is None or getattr(original, "_helios_by_own_keys", False):
        return bool(original) or _not_applied(
            "this Dagster has no _check_target_partitions_subset_is_valid: backfills check their partitions "
            "Dagster's way (its cost grows with the renders kept)"
        )

    def check(asset_key: Any, asset_graph: Any, target_partitions_subset: Any, instance_queryer: Any) -> None:
        node = asset_graph.get(asset_key) if target_partitions_subset and asset_graph.has(asset_key) else None
        partitions_def = node.partitions_def if node is not None else None
        if (
            partitions_def is None
            or not _has_dynamic_dimension(partitions_def)
            or isinstance(target_partitions_subset, AllPartitionsSubset)  # "all": Dagster's check is the cheaper
        ):
            original(asset_key, asset_graph, target_partitions_subset, instance_queryer)
            return
        targets = set(target_partitions_subset.get_partition_keys())
        with partition_loading_context(dynamic_partitions_store=instance_queryer):
            existing = {str(key) for key in partitions_def.filter_valid_partition_keys(targets)}
        removed = sorted(targets - existing)
        if removed:
            raise DagsterDefinitionChangedDeserializationError(
                f"Targeted partitions for asset {asset_key} have been removed since this backfill was stored. "
                f"The following partitions were removed: {removed}"
            )

    check._helios_by_own_keys = True  # type: ignore[attr-defined]
    asset_backfill._check_target_partitions_subset_is_valid = check
    return True


def _has_dynamic_dimension(partitions_def: Any) -> bool:
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        return partitions_def.partition_fn is None
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return any(_has_dynamic_dimension(dimension.partitions_def) for dimension in partitions_def.partitions_defs)
    return False


SQLITE_STORAGE_MODULES = (
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.event_log.sqlite.consolidated_sqlite_event_log",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
)
SQLITE_ENGINES_KEPT = 128
"""Engines kept per process: the instance's index, runs and schedules databases, and the per-run event logs the
process touched most recently."""


def reuse_sqlite_engines() -> bool:
    """Have Dagster's SQLite storages reuse one SQLAlchemy engine per database file; False when they do not create
    engines where this expects.

    They create a new engine (``NullPool``: a new sqlite3 connection per use) for every query, so SQLAlchemy, whose
    compiled-statement cache lives on the engine, compiles every statement afresh: ~40 % of the CPU of a query set
    a render's follower, daemon and run workers repeat (``bench_dagster.py``). A reused ``NullPool`` engine still
    opens a new connection per use and holds none between uses, so it is safe across threads and a fork.
    """
    import importlib

    modules = [importlib.import_module(name) for name in SQLITE_STORAGE_MODULES]
    if not all(callable(getattr(module, "create_engine", None)) for module in modules):
        return _not_applied(
            "this Dagster's SQLite storages create no engines where expected: each query compiles its statement"
        )
    if all(hasattr(module.create_engine, "helios_original") for module in modules):
        return True  # already reusing: the CLI, the daemon and the run workers' preload each ask, in one process too
    original = getattr(modules[0].create_engine, "helios_original", modules[0].create_engine)
    engines: OrderedDict[tuple[str, str], Any] = OrderedDict()
    lock = threading.Lock()

    def reused_engine(url: Any, **options: Any) -> Any:
        if options.get("poolclass") is not NullPool:
            return original(url, **options)
        key = (str(url), repr(sorted(options.items())))
        with lock:
            engine = engines.get(key)
            if engine is None:
                engine = engines[key] = original(url, **options)
            engines.move_to_end(key)
            while len(engines) > SQLITE_ENGINES_KEPT:
                engines.popitem(last=False)
        return engine

    reused_engine.helios_original = original  # type: ignore[attr-defined]
    for module in modules:
        module.create_engine = reused_engine  # type: ignore[attr-defined]
    return True


def daemon_loop_interval() -> float:
    from dagster._daemon import controller

    return float(controller.DEFAULT_DAEMON_INTERVAL_SECONDS)


def import_daemon() -> None:
    """Import what ``run_daemon_cli`` runs: the daemon's command and the daemons it starts."""
    import dagster._daemon.cli  # noqa: F401


def run_daemon_cli(argv: list[str]) -> None:
    """``dagster-daemon`` with ``argv``, in this process (so the loop interval set above applies)."""
    from dagster._daemon.cli import cli

    cli.main(args=argv, prog_name="dagster-daemon", obj={})


def import_code_server() -> None:
    """Import what ``dagster api grpc`` runs: Dagster's command line and its gRPC code server."""
    import dagster._cli
    import dagster._grpc.server  # noqa: F401


def workspace_location_names(workspace: Path) -> list[str]:
    """The code location names Dagster gives the entries of a workspace file (as the daemon and the UI name them)."""
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    return [origin.location_name for origin in WorkspaceFileTarget(paths=[str(workspace)]).create_origins()]


def code_server_answers(socket: Path) -> bool:
    """A code server listens on this Unix socket and answers a ping."""
    from dagster._grpc.client import DagsterGrpcClient

    try:
        DagsterGrpcClient(socket=str(socket)).ping("helios")
    except Exception:  # not listening yet, or refusing: both mean "not yet"
        return False
    return True


def is_terminal(backfill: Any) -> bool:
    from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES

    return backfill.status in BULK_ACTION_TERMINAL_STATUSES


def newest_backfill(instance: dg.DagsterInstance, tags: dict[str, str], created_after: datetime | None) -> Any | None:
    from dagster._core.execution.backfill import BulkActionsFilter

    backfills = instance.get_backfills(filters=BulkActionsFilter(tags=tags, created_after=created_after), limit=1)
    return backfills[0] if backfills else None


def backfills_in_progress(instance: dg.DagsterInstance) -> list[Any]:
    """The backfills on the instance that are still requested or being canceled."""
    from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus

    statuses = [BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING]
    return list(instance.get_backfills(filters=BulkActionsFilter(statuses=statuses)))


def stop_backfill(instance: dg.DagsterInstance, backfill: Any, daemon_alive: bool) -> None:
    """CANCELING lets a live daemon wind the backfill down; without a daemon it is CANCELED at once."""
    from dagster._core.execution.backfill import BulkActionStatus

    status = BulkActionStatus.CANCELING if daemon_alive else BulkActionStatus.CANCELED
    instance.update_backfill(backfill.with_status(status))


def add_asset_backfill(
    instance: dg.DagsterInstance,
    asset_graph: Any,
    partition_names: Sequence[str],
    asset_selection: Sequence[dg.AssetKey],
    tags: dict[str, str],
    title: str,
) -> str:
    """An asset backfill of ``partition_names`` of the selection (what the UI's *Launch backfill* creates)."""
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=asset_graph,
        partition_names=list(partition_names),
        asset_selection=list(asset_selection),
        backfill_timestamp=time.time(),
        tags=tags,
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=title,
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


def add_backfill_of_remaining(instance: dg.DagsterInstance, backfill: Any, asset_graph: Any) -> str:
    """A new backfill of what ``backfill`` targeted but did not materialise (the UI's *from failure*)."""
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.storage.tags import PARENT_BACKFILL_ID_TAG, ROOT_BACKFILL_ID_TAG
    from dagster._core.utils import make_new_backfill_id

    data = backfill.get_asset_backfill_data(asset_graph)
    remaining = data.target_subset - data.materialized_subset
    if remaining.num_partitions_and_non_partitioned_assets == 0:
        raise ValueError(f"backfill {backfill.backfill_id} has nothing left to materialise")
    new_backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id=make_new_backfill_id(),
        asset_graph_subset=remaining,
        dynamic_partitions_store=instance,
        tags={
            **backfill.tags,
            PARENT_BACKFILL_ID_TAG: backfill.backfill_id,
            ROOT_BACKFILL_ID_TAG: backfill.tags.get(ROOT_BACKFILL_ID_TAG, backfill.backfill_id),
        },
        backfill_timestamp=time.time(),
        title=f"Re-execution of {backfill.title}" if backfill.title else None,
        description=backfill.description,
        run_config=backfill.run_config,
    )
    instance.add_backfill(new_backfill)
    return new_backfill.backfill_id


def run_queue_limits(instance: dg.DagsterInstance) -> tuple[int | None, list[dict[str, Any]]]:
    """The run queue's ``max_concurrent_runs`` (-1: none) and tag limits, as the instance's ``concurrency:``
    settings give them (the coordinator's own config holds only defaults); (None, []) without a run queue."""
    config = instance.get_concurrency_config().run_queue_config
    if config is None:
        return None, []
    return config.max_concurrent_runs, [dict(limit) for limit in config.tag_concurrency_limits]


def pool_usage(instance: dg.DagsterInstance, pool: str) -> tuple[int, list[tuple[str, str]], list[tuple[str, str]]]:
    """A concurrency pool: (its slots, (run id, step) of the holders, (run id, step) of steps waiting for one)."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    slots = info.limit if info.limit is not None else info.slot_count
    holders = [(claim.run_id, claim.step_key) for claim in info.claimed_slots]
    waiting = [(step.run_id, step.step_key) for step in info.pending_steps if step.assigned_timestamp is None]
    return slots, holders, waiting


# Modules a run worker needs before it can run anything: Dagster's run command and its SQLite storages.
RUN_WORKER_DAGSTER_MODULES = (
    "dagster",
    "dagster._cli.api",
    "dagster._core.storage.runs.sqlite",
    "dagster._core.storage.event_log.sqlite",
    "dagster._core.storage.schedules.sqlite",
)


def execute_run_args(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """What ``dagster api execute_run`` takes: the run's code origin, its id and the instance, serialised."""
    from dagster._grpc.types import ExecuteRunArgs

    args = ExecuteRunArgs(job_origin=run.job_code_origin, run_id=run.run_id, instance_ref=instance.get_ref())
    return dg.serialize_value(args)


def execute_run(serialized_args: str) -> None:
    """``dagster api execute_run`` in this process: loads the code location, runs, records every event."""
    from dagster._cli.api import execute_run_command

    execute_run_command.callback(input_json=serialized_args, compressed_input_json=None)  # the click command's body


def report_run_worker_died(instance: dg.DagsterInstance, run: dg.DagsterRun, exit_code: int, launcher: type) -> None:
    """What Dagster's code server reports when a run's process ended without ending its run: the run FAILED
    (CANCELED if it was being cancelled)."""
    from dagster._utils import get_run_crash_explanation

    message = get_run_crash_explanation(prefix=f"Run execution process for {run.run_id}", exit_code=exit_code)
    instance.report_engine_event(message, run, cls=launcher)
    if run.status == dg.DagsterRunStatus.CANCELING:
        # it was being stopped (a SIGTERM to its process group can end it before it records its own end):
        # canceled, as run monitoring ends a CANCELING run whose worker is gone, and not retried
        instance.report_run_canceled(run)
    else:
        instance.report_run_failed(run)


def check_evaluation_of(record: Any, check_name: str, passed: bool, **fields: Any) -> dg.AssetCheckEvaluation:
    """A check result on the materialisation ``record`` (an ``EventLogRecord``), reported without a run.

    Dagster counts a check's status only while it targets the asset partition's latest
    materialisation; runless evaluations name that target through an internal record type.
    """
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    materialization = record.asset_materialization
    target = AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
    )
    return dg.AssetCheckEvaluation(
        asset_key=materialization.asset_key,
        check_name=check_name,
        passed=passed,
        partition=str(materialization.partition),
        target_materialization_data=target,
        **fields,
    )


MIRROR_POLL_SECONDS = 0.2
"""How often a step's captured output is copied on to the run worker's own stdout and stderr (``tail -F``: 1 s)."""


def mirror_compute_logs_by_thread() -> bool:
    """Have Dagster's local compute logs (each step's stdout and stderr in files the UI shows) mirrored on to the
    process's own streams by a thread of that process instead of by processes; False when this Dagster captures
    them elsewhere.

    Dagster's ``LocalComputeLogManager`` starts four processes per step for that: a ``tail -F`` per stream, and a
    Python interpreter per stream that kills the ``tail`` if the run worker dies (~0.08 CPU-s each to start). Two
    chunk runs starting at once started eight, on the CPUs their Chromiums were starting on. A thread ends with its
    process, so there is nothing to watch. Called by the run workers (``run_worker``), whose steps end before they
    do; not by the CLI, whose in-process plan step it interrupts and abandons on Ctrl-C (its last words, written
    while the step's capture held its stderr, would wait for a thread the exit does not wait for).
    """
    if not all(hasattr(LocalComputeLogManager, name) for name in ("capture_logs", "get_captured_local_path")):
        return _not_applied("this Dagster's LocalComputeLogManager has moved: steps' output is mirrored by `tail`")
    if getattr(LocalComputeLogManager.capture_logs, "helios_threaded", False):
        return True

    @contextlib.contextmanager
    def capture_logs(self: Any, log_key: Sequence[str]) -> Iterator[CapturedLogContext]:
        outpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        errpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        with _mirrored(sys.stdout, outpath), _mirrored(sys.stderr, errpath):
            yield CapturedLogContext(log_key)
        Path(self.complete_artifact_path(log_key)).touch()  # the capture is complete: the UI stops polling

    capture_logs.helios_threaded = True  # type: ignore[attr-defined]
    LocalComputeLogManager.capture_logs = capture_logs  # type: ignore[method-assign]
    return True


@contextlib.contextmanager
def _mirrored(stream: Any, path: str) -> Iterator[None]:
    """Send ``stream`` (its file descriptor, so child processes' output too) to the file ``path``, and copy what the
    file gets on to where ``stream`` went before, from a thread, until the block ends."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).touch()
    try:
        original = os.dup(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no file descriptor (a test's captured stream): capture only
        with redirect_to_file(stream, path):
            yield
        return
    done = threading.Event()
    copier = threading.Thread(target=_copy_on, args=(path, original, done), name="helios-log-mirror", daemon=True)
    copier.start()
    try:
        with redirect_to_file(stream, path):
            yield
    finally:
        done.set()
        copier.join(MIRROR_POLL_SECONDS * 10)
        os.close(original)


def _copy_on(path: str, target: int, done: threading.Event) -> None:
    """Copy ``path`` from its start on to ``target`` as it grows, then what is left once ``done`` is set."""
    with open(path, "rb") as source:
        while True:
            finishing = done.is_set()  # taken before reading: what the block wrote is in the file by then
            data = source.read(1 << 16)
            if not data:
                if finishing:
                    return
                done.wait(MIRROR_POLL_SECONDS)
                continue
            while data:
                try:
                    data = data[os.write(target, data) :]
                except OSError:  # nobody reads the run worker's output any more: the file still has it all
                    return
