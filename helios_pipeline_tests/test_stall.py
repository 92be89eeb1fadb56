"""Why a render makes no progress (issue 9), read from a real instance with the project's run queue and pool.

Runs are put in the instance the way the daemon leaves them (queued, started, holding or waiting for a
``helios_chunks`` slot); ``explain`` must name what blocks the render: the runs and renders in progress,
the limit, the pool's holders. The CLI end of it (the note and the exit message) is in test_operability.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._daemon.types import DaemonHeartbeat

from helios_pipeline.dagster_defs.instance import BEAT_OVERDUE_SECONDS, REQUIRED_DAEMONS, RenderDaemon
from helios_pipeline.dagster_defs.names import CHUNK_ASSET, CHUNK_POOL
from helios_pipeline.dagster_defs.stall import STALL_SECONDS, STALL_SETTING, StallWatch, explain, stall_seconds
from helios_pipeline_tests.helpers import chunk_key, open_instance, write_instance_config

STARTED, QUEUED, STARTING = dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING
ORIGIN = RemoteJobOrigin(  # where a queued run's job comes from: Dagster requires one, the queue reads none here
    RemoteRepositoryOrigin(InProcessCodeLocationOrigin(LoadableTargetOrigin(python_file=__file__)), "__repository__"),
    "__ASSET_JOB",
)


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "home"
    write_instance_config(home)  # max_concurrent_runs 4, 4 runs per backfill, 2 chunk slots
    opened = open_instance(home)
    try:
        yield opened
    finally:
        opened.dispose()


def chunk_run(
    instance: dg.DagsterInstance, render: str, chunk: str, status: dg.DagsterRunStatus, **tags: str
) -> dg.DagsterRun:
    """A chunk run as a backfill creates it (partition tags of both dimensions), in ``status``."""
    partition = chunk_key(render, chunk)
    by_dimension = {f"dagster/partition/{name}": key for name, key in partition.keys_by_dimension.items()}
    run = dg.DagsterRun(
        job_name="__ASSET_JOB",
        asset_selection={CHUNK_ASSET},
        status=status,
        remote_job_origin=ORIGIN,
        tags={"dagster/partition": str(partition), **by_dimension, "dagster/backfill": f"bf-{render}", **tags},
    )
    return instance.add_run(run)


def test_queued_behind_the_run_limit_names_the_runs_in_progress(instance: dg.DagsterInstance) -> None:
    for chunk in ("000", "001", "002", "003"):
        chunk_run(instance, "other", chunk, STARTED)
    mine = chunk_run(instance, "mine", "000", QUEUED)

    stall = explain(instance, [mine], daemon_problem=None)

    assert stall is not None and stall.kind == "queue", stall
    assert "max_concurrent_runs 4" in stall.text and "render other chunk 000" in stall.text, stall.text


def test_queued_behind_a_tag_limit_names_the_limit_and_the_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_instance_config(home)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = 10
    config["concurrency"]["runs"]["tag_concurrency_limits"] = [{"key": "team", "value": "video", "limit": 1}]
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    instance = open_instance(home)
    try:
        chunk_run(instance, "other", "000", STARTED, team="video")
        mine = chunk_run(instance, "mine", "000", QUEUED, team="video")

        stall = explain(instance, [mine], daemon_problem=None)

        assert stall is not None and stall.kind == "queue", stall
        assert "limit of 1 runs per team tag" in stall.text and "render other chunk 000" in stall.text, stall.text
    finally:
        instance.dispose()


def test_a_chunk_waiting_for_a_pool_slot_names_the_slot_holders(instance: dg.DagsterInstance) -> None:
    storage = instance.event_log_storage
    storage.set_concurrency_slots(
        CHUNK_POOL, 2
    )  # what the daemon sets from the default limit when it first uses the pool
    holders = [chunk_run(instance, "other", chunk, STARTED) for chunk in ("000", "001")]
    for run in holders:
        assert storage.claim_concurrency_slot(CHUNK_POOL, run.run_id, "chunk_video").is_claimed
    mine = chunk_run(instance, "mine", "002", STARTED)
    assert not storage.claim_concurrency_slot(CHUNK_POOL, mine.run_id, "chunk_video").is_claimed  # now pending

    stall = explain(instance, [mine], daemon_problem=None)

    assert stall is not None and stall.kind == "pool", stall
    assert "chunk 002" in stall.text and "2 slots are held by" in stall.text, stall.text
    assert all(f"run {run.run_id[:8]}" in stall.text for run in holders), stall.text


def test_a_queued_chunk_behind_launched_chunk_runs_names_them(instance: dg.DagsterInstance) -> None:
    """The run queue keeps a chunk run queued while launched chunk runs will take every slot, claimed or not yet."""
    instance.event_log_storage.set_concurrency_slots(CHUNK_POOL, 2)
    started = chunk_run(instance, "other", "000", STARTED)
    assert instance.event_log_storage.claim_concurrency_slot(CHUNK_POOL, started.run_id, "chunk_video").is_claimed
    starting = chunk_run(instance, "mine", "001", STARTING)
    mine = chunk_run(instance, "mine", "002", QUEUED)

    stall = explain(instance, [starting, mine], daemon_problem=None)

    assert stall is not None and stall.kind == "pool", stall
    assert "chunk 002" in stall.text and "chunk 001" not in stall.text.split(" wait")[0], stall.text
    assert f"run {started.run_id[:8]}" in stall.text and f"run {starting.run_id[:8]}" in stall.text, stall.text


def test_a_pool_of_no_slots_is_named_with_how_to_raise_it(instance: dg.DagsterInstance) -> None:
    instance.event_log_storage.set_concurrency_slots(CHUNK_POOL, 0)
    mine = chunk_run(instance, "mine", "000", QUEUED)

    stall = explain(instance, [mine], daemon_problem=None)

    assert stall is not None and stall.kind == "pool", stall
    assert "has 0 slots" in stall.text and f"concurrency set {CHUNK_POOL}" in stall.text, stall.text


def test_a_run_launched_long_ago_that_no_worker_started(instance: dg.DagsterInstance) -> None:
    mine = chunk_run(instance, "mine", "001", STARTING)

    soon = explain(instance, [mine], daemon_problem=None)
    later = explain(instance, [mine], daemon_problem=None, now=time.time() + 120)

    assert soon is not None and soon.kind == "launch", soon
    assert later is not None and later.kind == "worker" and "no worker has started" in later.text, later


def test_a_daemon_problem_comes_first(instance: dg.DagsterInstance) -> None:
    mine = chunk_run(instance, "mine", "000", QUEUED)
    stall = explain(instance, [mine], daemon_problem="the daemon abc has not heart-beaten for 60 s")
    assert stall is not None and stall.kind == "daemon" and "abc" in stall.text


def test_the_watch_explains_only_a_render_that_stopped_moving(instance: dg.DagsterInstance) -> None:
    mine = chunk_run(instance, "mine", "000", QUEUED)
    instance.event_log_storage.set_concurrency_slots(CHUNK_POOL, 0)
    watch = StallWatch(instance, stall_seconds=0.3)

    assert watch.observe(0, [mine]) is None
    time.sleep(0.4)
    assert watch.observe(0, [mine]) is not None, "no move for longer than the bound: explained"
    assert watch.observe(5, [mine]) is None, "a new frame is progress"
    assert watch.reason is None


def test_a_daemon_that_stopped_beating_is_named_with_how_to_resume(instance: dg.DagsterInstance) -> None:
    daemon = RenderDaemon(instance)  # relies on the deployment's daemon: it starts none of its own here

    def beat(age: float) -> None:
        for kind in (*REQUIRED_DAEMONS, "BACKFILL"):
            instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - age, kind, "killed-daemon-7", errors=[]))

    beat(5)
    assert daemon.problem() is None, "a daemon that beat 5 s ago is fine"
    beat(BEAT_OVERDUE_SECONDS + 10)
    problem = daemon.problem()
    assert problem is not None and "killed-daemon-7" in problem and "helios-pipeline ui" in problem, problem
    instance.wipe_daemon_heartbeats()
    problem = daemon.problem()
    assert problem is not None and "no Dagster daemon heart-beats" in problem, problem


def test_how_long_a_render_may_stand_still_is_a_setting_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STALL_SETTING, raising=False)
    assert stall_seconds() == STALL_SECONDS == 15
    monkeypatch.setenv(STALL_SETTING, "2.5")
    assert stall_seconds() == 2.5
    for bad, reason in (("soon", "a number of seconds"), ("0", "between 1 and 3600 seconds")):
        monkeypatch.setenv(STALL_SETTING, bad)
        with pytest.raises(ValueError, match=f"{STALL_SETTING} must be {reason}, got '{bad}'"):
            stall_seconds()
