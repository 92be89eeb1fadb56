"""The project's daemon entry point: Dagster's daemon with a short backfill loop."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

import dagster as dg
import pytest
from dagster._daemon import controller

from helios_pipeline.dagster_defs import private_api
from helios_pipeline.dagster_defs.daemon import (
    DEFAULT_BACKFILL_LOOP_SECONDS,
    LOOP_SETTING,
    backfill_loop_seconds,
    daemon_command,
    shorten_backfill_loop,
)
from helios_pipeline.dagster_defs.settings import TRIGGER_SETTING, Settings, trigger_seconds


def test_loop_interval_defaults_and_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOOP_SETTING, raising=False)
    assert backfill_loop_seconds() == DEFAULT_BACKFILL_LOOP_SECONDS == 0.5
    monkeypatch.setenv(LOOP_SETTING, "2.5")
    assert backfill_loop_seconds() == 2.5


@pytest.mark.parametrize(("value", "reason"), [("fast", "a number of seconds"), ("0", "between"), ("900", "between")])
def test_a_bad_loop_interval_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str, reason: str) -> None:
    monkeypatch.setenv(LOOP_SETTING, value)
    with pytest.raises(ValueError, match=f"{LOOP_SETTING}.*{reason}.*{value}"):
        backfill_loop_seconds()


@pytest.mark.parametrize("setting", [LOOP_SETTING, TRIGGER_SETTING])
def test_the_daemon_refuses_to_start_with_a_bad_interval(setting: str) -> None:
    result = subprocess.run(
        daemon_command("run", "-w", "workspace.yaml"),
        env={"PATH": "/usr/bin:/bin", setting: "soon"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert setting in result.stderr and "'soon'" in result.stderr
    assert daemon_command()[0] == sys.executable


@pytest.mark.parametrize(("value", "reason"), [("2.5", "a whole number of seconds"), ("0", "between 1 and 86400")])
def test_a_bad_trigger_interval_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str, reason: str) -> None:
    monkeypatch.delenv(TRIGGER_SETTING, raising=False)
    assert trigger_seconds() == 5
    monkeypatch.setenv(TRIGGER_SETTING, value)
    with pytest.raises(ValueError, match=f"{TRIGGER_SETTING} must be {reason}.*{value}"):
        trigger_seconds()


def test_a_short_trigger_interval_lowers_dagsters_sensor_and_automation_loop_floors() -> None:
    """Guards a Dagster upgrade: the constants its sensor and automation loops sleep by must be where they were."""
    from dagster._daemon import asset_daemon, sensor

    before = sensor.MIN_INTERVAL_LOOP_TIME, asset_daemon.MIN_INTERVAL_LOOP_SECONDS
    assert before == (5, 5)
    try:
        assert private_api.set_trigger_loop_floor(2)
        assert (sensor.MIN_INTERVAL_LOOP_TIME, asset_daemon.MIN_INTERVAL_LOOP_SECONDS) == (2, 2)
    finally:
        sensor.MIN_INTERVAL_LOOP_TIME, asset_daemon.MIN_INTERVAL_LOOP_SECONDS = before


def test_each_round_of_the_trigger_loops_evaluates_the_sensors() -> None:
    """The loops go round every HELIOS_TRIGGER_SECONDS (at most Dagster's 5 s) and the sensors' interval is shorter
    than a round, so no round skips them (a sensor skipped waited two rounds)."""
    from helios_pipeline.dagster_defs.daemon import trigger_loop_seconds
    from helios_pipeline.dagster_defs.settings import sensor_interval_seconds

    triggers = (1, 2, 5, 60)
    assert [trigger_loop_seconds(seconds) for seconds in triggers] == [0.5, 2, 5, 5]
    assert [sensor_interval_seconds(seconds) for seconds in triggers] == [1, 1, 4, 59]


def test_the_shortened_interval_paces_dagsters_backfill_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards a Dagster upgrade: Dagster's own backfill loop, run for 3.5 s, must go round every second."""
    import logging
    import threading

    import dagster as dg
    from dagster._core.execution import asset_backfill
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon import backfill as backfill_daemon
    from dagster._daemon.backfill import execute_backfill_iteration_loop
    from dagster._daemon.daemon import SpanMarker

    monkeypatch.setattr(controller, "DEFAULT_DAEMON_INTERVAL_SECONDS", controller.DEFAULT_DAEMON_INTERVAL_SECONDS)
    monkeypatch.setattr(backfill_daemon, "execute_backfill_iteration", backfill_daemon.execute_backfill_iteration)
    check = asset_backfill._check_target_partitions_subset_is_valid
    monkeypatch.setattr(asset_backfill, "_check_target_partitions_subset_is_valid", check)  # restored after
    assert shorten_backfill_loop(1.0)
    assert asset_backfill._check_target_partitions_subset_is_valid is not check, "the daemon checks its own keys"
    target = ModuleTarget(
        module_name="helios_pipeline.dagster_defs.definitions", attribute="defs", working_directory=None,
        location_name="helios",
    )  # fmt: skip
    with (
        dg.instance_for_test() as instance,
        create_test_daemon_workspace_context(target, instance) as context,
    ):
        started = time.monotonic()
        loop = execute_backfill_iteration_loop(
            context, logging.getLogger("test"), threading.Event(), until=time.time() + 3.5
        )
        rounds = sum(1 for marker in loop if marker is SpanMarker.START_SPAN)
    assert rounds >= 3, f"{rounds} backfill loop rounds in {time.monotonic() - started:.1f} s: the interval is not 1 s"


@pytest.mark.parametrize(
    ("value", "reason"), [("four", "a whole number"), ("2.5", "a whole number"), ("0", "between 1 and 999")]
)
def test_a_bad_chunk_dimension_size_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str, reason: str) -> None:
    monkeypatch.setenv("HELIOS_MAX_CHUNKS", value)
    with pytest.raises(ValueError, match=f"HELIOS_MAX_CHUNKS must be {reason}.*{value}"):
        Settings.from_env()


class GatedLoop:
    """Dagster's backfill iteration behind ``gate_backfill_iterations``, with the evaluation itself replaced by a
    counter: what is checked is when the loop evaluates, on a real instance."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, instance, quiet_seconds: float) -> None:
        import types

        from dagster._daemon import backfill as backfill_daemon

        self.evaluations = 0

        def evaluate(*_args, **_kwargs):
            self.evaluations += 1
            yield None

        monkeypatch.setattr(backfill_daemon, "execute_backfill_iteration", evaluate)
        assert private_api.gate_backfill_iterations(quiet_seconds)
        self.gated = backfill_daemon.execute_backfill_iteration
        self.context = types.SimpleNamespace(instance=instance)

    def evaluates(self, futures: dict | None = None) -> bool:
        """One round of the loop; whether it evaluated the backfills."""
        import logging

        before = self.evaluations
        list(self.gated(self.context, logging.getLogger("test"), backfill_futures=futures or {}))
        return self.evaluations > before


def test_the_backfill_loop_evaluates_only_when_a_backfill_or_its_runs_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import Future

    import dagster as dg
    from dagster._core.storage.tags import BACKFILL_ID_TAG
    from dagster._core.test_utils import create_run_for_test

    from helios_pipeline.dagster_defs.definitions import defs
    from helios_pipeline.dagster_defs.runner import launch_backfill

    with dg.instance_for_test() as instance:
        loop = GatedLoop(monkeypatch, instance, quiet_seconds=300)
        assert loop.evaluates(), "the first round always evaluates"
        assert not loop.evaluates() and not loop.evaluates(), "no backfill, nothing changed"

        instance.add_dynamic_partitions("renders", ["r"])
        backfill_id = launch_backfill(instance, "r", defs.resolve_asset_graph())
        assert loop.evaluates(), "a new backfill"
        assert not loop.evaluates()

        run = create_run_for_test(instance, job_name="__ASSET_JOB", tags={BACKFILL_ID_TAG: backfill_id})
        assert loop.evaluates(), "a run of the backfill was launched"
        assert not loop.evaluates()
        instance.report_run_failed(run)
        assert loop.evaluates(), "a run of the backfill ended"
        assert not loop.evaluates()

        other = create_run_for_test(instance, job_name="__ASSET_JOB", tags={BACKFILL_ID_TAG: "someone-else"})
        instance.report_run_failed(other)
        assert not loop.evaluates(), "runs of no unfinished backfill change nothing"

        retry = create_run_for_test(instance, job_name="__ASSET_JOB", tags={BACKFILL_ID_TAG: backfill_id})
        pending: Future = Future()
        assert loop.evaluates({backfill_id: pending}), "an evaluation in flight: Dagster's own loop decides"
        pending.set_result([])
        assert loop.evaluates(), "what changed while an evaluation was in flight is evaluated once it is done"
        assert not loop.evaluates()
        instance.report_run_failed(retry)

        assert loop.evaluates()
        private_api.stop_backfill(instance, instance.get_backfill(backfill_id), daemon_alive=True)
        assert loop.evaluates(), "the backfill is being cancelled"
        assert not loop.evaluates()


def test_an_unchanged_backfill_is_still_evaluated_after_the_quiet_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the counts cannot see (a retryable error of the last evaluation, partitions materialised by runs
    outside any backfill) is picked up within ``quiet_seconds``."""
    import dagster as dg

    with dg.instance_for_test() as instance:
        loop = GatedLoop(monkeypatch, instance, quiet_seconds=0.5)
        assert loop.evaluates() and not loop.evaluates()
        time.sleep(0.6)
        assert loop.evaluates() and not loop.evaluates()


def test_the_backfill_loop_goes_round_as_soon_as_a_run_ends_not_at_its_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a loop interval of a minute, the backfill loop waits while nothing is written, and goes round within a
    fraction of a second when another process (here a thread) records a run's end in the SQLite run storage."""
    import threading
    import types

    import dagster as dg
    from dagster._core.test_utils import create_run_for_test
    from dagster._daemon import backfill as backfill_daemon
    from dagster._daemon.daemon import BackfillDaemon, SpanMarker

    monkeypatch.setattr(BackfillDaemon, "core_loop", BackfillDaemon.core_loop)
    monkeypatch.setattr(controller, "DEFAULT_DAEMON_INTERVAL_SECONDS", 60)
    assert private_api.wake_backfill_loop_on_run_changes()
    rounds: list[float] = []

    def counted_round(*_args, **_kwargs):
        rounds.append(time.monotonic())
        yield None

    monkeypatch.setattr(backfill_daemon, "execute_backfill_iteration", counted_round)
    with dg.instance_for_test() as instance:
        run = create_run_for_test(instance, job_name="job")
        written: list[float] = []

        def end_the_run_later() -> None:
            time.sleep(1.5)
            written.append(time.monotonic())
            instance.report_run_failed(run)

        daemon = BackfillDaemon({"use_threads": False})
        loop = daemon.core_loop(types.SimpleNamespace(instance=instance), threading.Event())
        writer = threading.Thread(target=end_the_run_later)
        writer.start()
        while len(rounds) < 2:
            marker = next(loop)
            assert marker is None or marker in (SpanMarker.START_SPAN, SpanMarker.END_SPAN)
        writer.join()
    assert written, "the loop went round again before anything was written (its interval is 60 s)"
    assert rounds[1] - written[0] < 0.5, f"the loop went round {rounds[1] - written[0]:.2f} s after the run ended"


def test_the_run_storage_watch_sees_every_commit_to_a_sqlite_instance_only() -> None:
    import types

    import dagster as dg
    from dagster._core.test_utils import create_run_for_test

    with dg.instance_for_test() as instance:
        watch = private_api.RunStorageWatch(instance)
        assert watch.applies and not watch.changed()
        run = create_run_for_test(instance, job_name="job")
        assert watch.changed() and not watch.changed()
        instance.get_runs()  # reading commits nothing
        assert not watch.changed()
        for value in range(30):  # quick writes of the same size
            instance.add_run_tags(run.run_id, {"step": f"{value:02d}"})
            assert watch.changed(), f"write {value} was not seen"
        watch.close()
        for file in watch.database.parent.glob(f"{watch.database.name}*"):  # removed under a running daemon
            file.unlink()
        missing = private_api.RunStorageWatch(instance)
        assert missing.changed(), "a run storage it cannot read counts as changed: the loop looks for itself"
        assert not watch.database.exists(), "the watch created a database file"
    other_storage = types.SimpleNamespace(run_storage=object())  # an instance on Postgres or MySQL
    assert not private_api.RunStorageWatch(other_storage).applies
    assert not private_api.RunStorageWatch(other_storage).changed()


def test_the_backfill_loop_asks_nothing_while_nothing_is_committed_to_the_sqlite_run_storage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A render in progress: the loop goes round twice a second; while no run or backfill is written, a round asks
    the run storage nothing (it made three count queries); a commit, whatever it is, brings the counts back."""
    import types

    import dagster as dg
    from dagster._core.test_utils import create_run_for_test

    asked = []
    counts = private_api.backfill_activity
    monkeypatch.setattr(private_api, "backfill_activity", lambda instance: asked.append(1) or counts(instance))
    with dg.instance_for_test() as instance:
        loop = GatedLoop(monkeypatch, instance, quiet_seconds=300)
        assert loop.evaluates() and len(asked) == 1
        assert not any(loop.evaluates() for _ in range(5))
        assert len(asked) == 1, "the loop queried the run storage though nothing was committed"
        create_run_for_test(instance, job_name="job")  # a write that changes no backfill's counts
        assert not loop.evaluates() and len(asked) == 2
        assert not loop.evaluates() and len(asked) == 2

    on_postgres = GatedLoop(monkeypatch, types.SimpleNamespace(run_storage=object()), quiet_seconds=300)
    monkeypatch.setattr(private_api, "backfill_activity", lambda instance: asked.append(1) or ())
    asked.clear()
    assert on_postgres.evaluates() and not on_postgres.evaluates() and not on_postgres.evaluates()
    assert len(asked) == 3, "with nothing to watch, every round counts"


def test_a_run_enqueued_in_the_daemon_is_dequeued_without_waiting_for_the_queue_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run queue's loop, with an interval of a minute, goes round again as soon as a run is submitted to the
    queue in its process (as the backfill loop does); without a submit it waits, beating for the heartbeat."""
    import threading

    import dagster as dg
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.run_coordinator.base import SubmitRunContext
    from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test
    from dagster._daemon.daemon import SpanMarker
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    monkeypatch.setattr(QueuedRunCoordinator, "submit_run", QueuedRunCoordinator.submit_run)
    monkeypatch.setattr(QueuedRunCoordinatorDaemon, "core_loop", QueuedRunCoordinatorDaemon.core_loop)
    assert private_api.wake_run_queue_on_submit()
    rounds: list[float] = []

    def counted_round(self, _context):
        rounds.append(time.monotonic())
        yield None

    monkeypatch.setattr(QueuedRunCoordinatorDaemon, "run_iteration", counted_round)
    queue_config = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    with dg.instance_for_test(overrides={"run_coordinator": queue_config}) as instance:
        daemon = QueuedRunCoordinatorDaemon(interval_seconds=60)
        loop = daemon.core_loop(None, threading.Event())
        beats = 0
        while len(rounds) < 1 or beats < 3:  # the first round, then three heartbeats (each at most 0.5 s)
            beats += next(loop) is None and len(rounds) == 1
        assert len(rounds) == 1, "the loop went round again with nothing submitted"

        repository = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("helios"), "__repository__")
        origin = RemoteJobOrigin(repository, "job")
        not_started = DagsterRunStatus.NOT_STARTED
        run = create_run_for_test(instance, job_name="job", status=not_started, remote_job_origin=origin)
        submitted = time.monotonic()
        instance.run_coordinator.submit_run(SubmitRunContext(run, workspace=None))
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.QUEUED
        while len(rounds) < 2 and time.monotonic() - submitted < 10:
            marker = next(loop)
            assert marker is None or marker in (SpanMarker.START_SPAN, SpanMarker.END_SPAN)
    assert len(rounds) == 2, "the submit did not wake the queue's loop (its interval is 60 s)"
    assert rounds[1] - submitted < 0.6


def test_the_run_queue_loop_lets_a_stopping_daemon_go_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon stops once every loop thread has seen its shutdown: the queue's loop, waiting out an interval of a
    minute for a submit, sees it within a fraction of a second (its waits were 0.5 s: the CLI's render ended that
    much later)."""
    import threading

    from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    monkeypatch.setattr(QueuedRunCoordinator, "submit_run", QueuedRunCoordinator.submit_run)
    monkeypatch.setattr(QueuedRunCoordinatorDaemon, "core_loop", QueuedRunCoordinatorDaemon.core_loop)
    assert private_api.wake_run_queue_on_submit()

    def one_round(self, _context):
        yield None

    monkeypatch.setattr(QueuedRunCoordinatorDaemon, "run_iteration", one_round)
    shutdown = threading.Event()
    loop = QueuedRunCoordinatorDaemon(interval_seconds=60).core_loop(None, shutdown)
    ended: list[float] = []

    def run_loop() -> None:
        for _marker in loop:
            if shutdown.is_set():
                ended.append(time.monotonic())
                return

    thread = threading.Thread(target=run_loop, daemon=True)
    thread.start()
    time.sleep(1.2)  # the round, then waiting for a submit
    stopped = time.monotonic()
    shutdown.set()
    thread.join(5)
    assert ended, "the loop did not yield after the shutdown"
    assert ended[0] - stopped < 0.25, f"the queue's loop saw the shutdown {ended[0] - stopped:.2f} s after it"


def test_a_dagster_without_the_backfill_iteration_keeps_its_own_loop_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dagster._daemon import backfill as backfill_daemon
    from dagster._daemon.daemon import BackfillDaemon

    own_loop = BackfillDaemon.core_loop
    monkeypatch.setattr(BackfillDaemon, "core_loop", own_loop)
    monkeypatch.delattr(backfill_daemon, "execute_backfill_iteration")
    with caplog.at_level("WARNING", logger="helios_pipeline"):
        assert not private_api.wake_backfill_loop_on_run_changes()
    assert "has no execute_backfill_iteration: it goes round on its interval only" in caplog.text
    assert BackfillDaemon.core_loop is own_loop


def _chunks_backfill(instance: dg.DagsterInstance, past_renders: int) -> tuple[Any, Any]:
    """A chunk-like asset (dynamic render x static chunk) with ``past_renders`` renders kept plus ``now``, and a
    backfill of ``now``'s chunks: its data and the asset graph."""
    from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
    from dagster._core.execution.asset_backfill import AssetBackfillData

    renders = dg.DynamicPartitionsDefinition(name="probe_renders")
    chunks = dg.MultiPartitionsDefinition({"render": renders, "chunk": dg.StaticPartitionsDefinition(["000", "001"])})

    @dg.asset(partitions_def=chunks)
    def chunk() -> None: ...

    graph = AssetGraph.from_assets([chunk])
    instance.add_dynamic_partitions("probe_renders", [f"past-{i}" for i in range(past_renders)] + ["now"])
    targets = [str(dg.MultiPartitionKey({"render": "now", "chunk": c})) for c in ("000", "001")]
    return AssetBackfillData.from_asset_partitions(graph, targets, [chunk.key], instance, time.time(), False), graph


def _check_as_an_iteration(instance: dg.DagsterInstance, data: Any, graph: Any) -> None:
    """Dagster's validity check of a backfill in progress, with the queryer a daemon iteration makes."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
    from dagster._core.definitions.partitions.context import partition_loading_context
    from dagster._core.definitions.temporal_context import TemporalContext
    from dagster._core.execution import asset_backfill

    now = datetime.now(timezone.utc)
    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=now, last_event_id=None), instance=instance,
                          asset_graph=graph)  # fmt: skip
    with partition_loading_context(effective_dt=now, dynamic_partitions_store=instance):  # as the daemon's loop
        asset_backfill._check_asset_backfill_data_validity(data, graph, view.get_inner_queryer_for_back_compat())


def test_a_backfill_checks_that_its_own_partitions_exist_without_loading_every_render_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dagster checks at every iteration of a backfill in progress that its target partitions still exist, by
    building every render key kept times every chunk key: ~0.3 s per iteration with 10,000 renders kept, and
    growing. Patched, it asks the storage about the backfill's own keys only, and a removed render still fails the
    backfill with Dagster's error, naming the partitions."""
    from dagster._core.errors import DagsterDefinitionChangedDeserializationError
    from dagster._core.execution import asset_backfill

    original = asset_backfill._check_target_partitions_subset_is_valid
    monkeypatch.setattr(asset_backfill, "_check_target_partitions_subset_is_valid", original)  # restored after
    assert private_api.check_backfill_targets_by_their_own_keys()
    with dg.DagsterInstance.ephemeral() as instance:
        data, graph = _chunks_backfill(instance, past_renders=500)
        loaded: list[str] = []
        every_key = instance.get_dynamic_partitions
        monkeypatch.setattr(
            instance,
            "get_dynamic_partitions",
            lambda partitions_def_name: loaded.append(partitions_def_name) or every_key(partitions_def_name),
        )
        _check_as_an_iteration(instance, data, graph)
        assert loaded == [], "every render kept was loaded to check a backfill of two chunks"
        instance.delete_dynamic_partition("probe_renders", "now")
        with pytest.raises(DagsterDefinitionChangedDeserializationError, match=r"removed: \['000\|now', '001\|now'\]"):
            _check_as_an_iteration(instance, data, graph)
