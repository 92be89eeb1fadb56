"""What the CLI and the daemon cost the instance while a render runs: SQLite engines reused, and the follower's
pace by stage."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.runs.sqlite import sqlite_run_storage

from helios_pipeline.dagster_defs import private_api
from helios_pipeline.dagster_defs.names import (
    CHUNK_ASSET,
    CONCAT_ASSET,
    MIXED_ASSET,
    PARTITION_TAG,
    PLAN_ASSET,
    PLAN_JOB,
    RENDER_PARTITION_TAG,
)
from helios_pipeline.dagster_defs.runner import (
    FINISHING_POLL_SECONDS,
    POLL_SECONDS,
    RENDERING_POLL_SECONDS,
    _has_final_run,
    _poll_seconds,
)

Status = dg.DagsterRunStatus


@pytest.fixture
def sqlite_instance(tmp_path: Path) -> dg.DagsterInstance:
    """A SQLite instance of the test's own, with Dagster's SQLite storages reusing their engines."""
    assert private_api.reuse_sqlite_engines()  # guards a Dagster upgrade: the storages create engines where expected
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        yield instance


def _engines_of(instance: dg.DagsterInstance, run_id: str) -> list[object]:
    """The engines behind two uses each of the run storage and of one run's event log."""
    engines = []
    for _ in range(2):
        with instance.run_storage.connect() as conn:
            engines.append(conn.engine)
        with instance.event_log_storage.run_connection(run_id) as conn:
            engines.append(conn.engine)
    return engines


def test_sqlite_storages_reuse_one_engine_per_database_and_still_read_and_write(
    sqlite_instance: dg.DagsterInstance,
) -> None:
    run = sqlite_instance.create_run_for_job(dg.GraphDefinition("g").to_job(), run_id="a" * 32, tags={"k": "v"})
    sqlite_instance.report_engine_event("hello", run)
    engines = _engines_of(sqlite_instance, run.run_id)
    runs, events = engines[0::2], engines[1::2]
    assert runs[0] is runs[1] and events[0] is events[1] and runs[0] is not events[0]
    assert private_api.reuse_sqlite_engines()  # asked again (the daemon, then its run workers' preload): kept
    assert _engines_of(sqlite_instance, run.run_id)[0] is runs[0]
    # the statement cache lives on the engine: a query run twice is compiled once
    cache = runs[0]._compiled_cache
    sqlite_instance.get_runs(filters=dg.RunsFilter(tags={"k": "v"}))
    size = len(cache)
    assert [r.run_id for r in sqlite_instance.get_runs(filters=dg.RunsFilter(tags={"k": "v"}))] == [run.run_id]
    assert len(cache) == size
    assert any("hello" in (record.message or "") for record in sqlite_instance.all_logs(run.run_id))
    # a pooled engine (Postgres, MySQL) is left to its pool: only NullPool engines are kept
    other = sqlite_run_storage.create_engine("sqlite://")
    assert other is not sqlite_run_storage.create_engine("sqlite://")


def test_only_the_most_recently_used_engines_are_kept(
    sqlite_instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon touches every run's event log over its life: the engines it keeps are bounded."""
    monkeypatch.setattr(private_api, "SQLITE_ENGINES_KEPT", 2)
    job = dg.GraphDefinition("g").to_job()
    first, second, third = (sqlite_instance.create_run_for_job(job, run_id=c * 32).run_id for c in "bce")
    with sqlite_instance.event_log_storage.run_connection(first) as conn:
        kept = conn.engine
    with sqlite_instance.event_log_storage.run_connection(first) as conn:
        assert conn.engine is kept
    for run_id in (second, third):  # two other runs' event logs push the first run's out
        with sqlite_instance.event_log_storage.run_connection(run_id):
            pass
    with sqlite_instance.event_log_storage.run_connection(first) as conn:
        assert conn.engine is not kept


def _count_runs_in_child(instance: dg.DagsterInstance, queue: multiprocessing.Queue) -> None:
    queue.put(len(instance.get_runs()))


def test_a_forked_process_queries_through_the_engines_it_inherited(sqlite_instance: dg.DagsterInstance) -> None:
    """The warm launcher forks run workers from a process that has used the engines."""
    sqlite_instance.create_run_for_job(dg.GraphDefinition("g").to_job(), run_id="d" * 32)
    assert len(sqlite_instance.get_runs()) == 1
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_count_runs_in_child, args=(sqlite_instance, queue))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and queue.get(timeout=5) == 1


def _run(status: Status, *, chunk: bool, assets=(CONCAT_ASSET, MIXED_ASSET), job="__ASSET_JOB") -> dg.DagsterRun:
    tags = {RENDER_PARTITION_TAG: "r", PARTITION_TAG: "r|000"} if chunk else {PARTITION_TAG: "r"}
    selection = {CHUNK_ASSET} if chunk else set(assets)
    return dg.DagsterRun(
        job_name=job, run_id=f"{status.value}{chunk}", status=status, tags=tags, asset_selection=selection
    )


@pytest.mark.parametrize(
    ("active", "seconds"),
    [
        ([_run(Status.STARTED, chunk=True), _run(Status.STARTED, chunk=True)], RENDERING_POLL_SECONDS),
        ([_run(Status.STARTED, chunk=True), _run(Status.STARTING, chunk=True)], POLL_SECONDS),
        ([_run(Status.STARTED, chunk=True), _run(Status.NOT_STARTED, chunk=True)], POLL_SECONDS),
        ([], POLL_SECONDS),
        ([_run(Status.NOT_STARTED, chunk=False)], POLL_SECONDS),
        ([_run(Status.STARTED, chunk=False)], FINISHING_POLL_SECONDS),
        ([_run(Status.STARTED, chunk=False, assets=[PLAN_ASSET])], POLL_SECONDS),  # the CLI's plan is no final run
    ],
)
def test_the_follower_looks_less_often_only_while_every_unfinished_run_is_a_rendering_chunk(
    active: list[dg.DagsterRun], seconds: float
) -> None:
    """Chunks rendering: progress once a second. A run queued or starting, or the final run: as before."""
    assert RENDERING_POLL_SECONDS > POLL_SECONDS > FINISHING_POLL_SECONDS
    assert _poll_seconds(active) == seconds


def test_only_a_concat_or_mix_run_makes_the_follower_look_for_the_final_video() -> None:
    """The follower looks the final video up (a query on the event log) once a run that can record it exists: not
    while a render's plan run is its only run that is not a chunk run, as it is from submission until the chunks end.
    """
    plan = _run(Status.SUCCESS, chunk=False, assets=[PLAN_ASSET])
    scheduled_plan = _run(Status.SUCCESS, chunk=False, assets=[PLAN_ASSET], job=PLAN_JOB)
    chunks = [_run(Status.STARTED, chunk=True), _run(Status.SUCCESS, chunk=True)]
    assert not _has_final_run([*chunks, plan, scheduled_plan])
    assert _has_final_run([*chunks, plan, _run(Status.STARTED, chunk=False)])
    assert _has_final_run([_run(Status.STARTING, chunk=False, assets=[MIXED_ASSET])])  # automation's mix run
