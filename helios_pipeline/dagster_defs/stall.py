"""Why a render makes no progress: what its runs wait on, read from the instance.

A render can wait without failing: its runs queued behind other renders' runs (the run queue's
limits), its chunk steps waiting for a ``helios_chunks`` pool slot, a launched run that no worker
starts (a Celery queue nobody listens on), or no daemon to launch anything. The CLI showed
"waiting" and nothing more. ``StallWatch`` notices when neither the frames nor the runs of a render
have moved for ``STALL_SECONDS`` and names the cause (the blocking runs and renders, the limit, the
daemon), for the progress line and the message on exit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dagster as dg

from helios_pipeline.dagster_defs import private_api
from helios_pipeline.dagster_defs.names import (
    CHUNK_PARTITION_TAG,
    CHUNK_POOL,
    PARTITION_TAG,
    RENDER_PARTITION_TAG,
    RENDER_TAG,
)
from helios_pipeline.dagster_defs.settings import env_number

STALL_SECONDS = 15.0
"""No new frame and no run changing state for this long: the render is waiting on something, say what."""
STALL_SETTING = "HELIOS_STALL_SECONDS"
EXPLAIN_EVERY_SECONDS = 3.0  # the explanation reads the instance a few times: not on every poll
NO_WORKER_SECONDS = 60.0
"""A run launched this long ago and still STARTING has no worker (a run process starts in seconds)."""
NAMED_RUNS = 4  # blocking runs named one by one; more are counted
IN_PROGRESS = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


def stall_seconds() -> float:
    """How long a render may stand still before the CLI says what it waits on (``HELIOS_STALL_SECONDS``, default
    15 s): longer where renders routinely queue behind others, shorter to hear sooner; a clear error out of 1..3600."""
    return env_number(STALL_SETTING, STALL_SECONDS, 1, 3600, unit="seconds")


@dataclass(frozen=True)
class Stall:
    """Why a render waits: ``kind`` (daemon, queue, pool, worker, launch) and one line naming the cause."""

    kind: str
    text: str


def describe_run(run: dg.DagsterRun) -> str:
    """``render x chunk 001`` / ``render x concat/mix``: which render's work a run does."""
    render = run.tags.get(RENDER_PARTITION_TAG) or run.tags.get(PARTITION_TAG) or run.tags.get(RENDER_TAG)
    chunk = run.tags.get(CHUNK_PARTITION_TAG)
    work = f"chunk {chunk}" if chunk else "plan/concat/mix"
    return f"render {render} {work} (run {run.run_id[:8]})" if render else f"run {run.run_id[:8]} ({run.job_name})"


def _name_runs(runs: Sequence[dg.DagsterRun]) -> str:
    named = ", ".join(describe_run(run) for run in runs[:NAMED_RUNS])
    return named + (f" and {len(runs) - NAMED_RUNS} more" if len(runs) > NAMED_RUNS else "")


def _chunk_label(run: dg.DagsterRun) -> str:
    chunk = run.tags.get(CHUNK_PARTITION_TAG)
    return f"chunk {chunk}" if chunk else "concat/mix"


def explain(
    instance: dg.DagsterInstance, runs: Sequence[dg.DagsterRun], daemon_problem: str | None, now: float | None = None
) -> Stall | None:
    """Why the render whose runs are ``runs`` is not moving (None when nothing is found to blame).

    ``daemon_problem`` is what the CLI knows of the daemon the render relies on (None: it beats).
    """
    now = time.time() if now is None else now
    active = [run for run in runs if not run.is_finished]
    if daemon_problem is not None:
        return Stall("daemon", daemon_problem)
    started_chunks = [run for run in active if run.status == dg.DagsterRunStatus.STARTED]
    pool_wait = _pool_wait(instance, started_chunks, queued=False)
    if pool_wait is not None:
        return pool_wait
    queued = [run for run in active if run.status in (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED)]
    if queued:
        return _queue_wait(instance, queued)
    starting = [run for run in active if run.status == dg.DagsterRunStatus.STARTING]
    if starting:
        return _start_wait(instance, starting, now)
    if not active:
        return Stall("launch", "no run of the render is queued or running: waiting for the daemon to launch the next")
    return None


def _pool_wait(instance: dg.DagsterInstance, runs: Sequence[dg.DagsterRun], queued: bool) -> Stall | None:
    """Chunk runs waiting on the chunk pool: started ones whose step waits for a slot, or (``queued``) queued
    ones while every slot is held or promised (the queue counts a launched chunk run as holding one)."""
    chunk_runs = {run.run_id: run for run in runs if CHUNK_PARTITION_TAG in run.tags}
    if not chunk_runs:
        return None
    slots, holders, waiting = private_api.pool_usage(instance, CHUNK_POOL)
    users = {run_id: None for run_id, _step in holders}
    if queued:
        launched = instance.get_runs(filters=dg.RunsFilter(statuses=list(IN_PROGRESS)))
        users.update({run.run_id: None for run in launched if CHUNK_PARTITION_TAG in run.tags})
        if len(users) < slots:
            return None
        blocked = list(chunk_runs.values())
    else:
        blocked = [chunk_runs[run_id] for run_id, _step in waiting if run_id in chunk_runs]
        if not blocked:
            return None
    chunks = ", ".join(sorted(_chunk_label(run) for run in blocked))
    if slots <= 0:
        return Stall(
            "pool",
            f"{chunks} wait for a {CHUNK_POOL} pool slot, and the pool has {slots} slots "
            f"(raise it: `dagster instance concurrency set {CHUNK_POOL} 2`)",
        )
    holder_runs = [run for run in (instance.get_run_by_id(run_id) for run_id in users) if run is not None]
    held_by = _name_runs(holder_runs) if holder_runs else f"{len(users)} steps"
    return Stall("pool", f"{chunks} wait for a {CHUNK_POOL} pool slot: its {slots} slots are held by {held_by}")


def _queue_wait(instance: dg.DagsterInstance, queued: Sequence[dg.DagsterRun]) -> Stall:
    """Queued runs: behind the run limit, behind a tag limit (naming the runs in progress), or not yet dequeued."""
    max_runs, tag_limits = private_api.run_queue_limits(instance)
    in_progress = instance.get_runs(filters=dg.RunsFilter(statuses=list(IN_PROGRESS)))
    count = f"{len(queued)} run{'s' if len(queued) != 1 else ''} queued"
    if max_runs is not None and 0 <= max_runs <= len(in_progress):
        if not in_progress:
            return Stall("queue", f"{count}: the run queue's max_concurrent_runs is {max_runs}")
        return Stall(
            "queue",
            f"{count} behind the run limit (max_concurrent_runs {max_runs}): in progress are {_name_runs(in_progress)}",
        )
    for limit in tag_limits:
        key, allowed = limit.get("key"), int(limit.get("limit", 0))
        for run in queued:
            if key not in run.tags or not _limit_applies(limit.get("value"), run.tags[key]):
                continue
            holders = [other for other in in_progress if other.tags.get(key) == run.tags[key]]
            if len(holders) >= allowed:
                return Stall(
                    "queue",
                    f"{count} behind the limit of {allowed} runs per {key} tag: in progress are {_name_runs(holders)}",
                )
    pool_wait = _pool_wait(instance, queued, queued=True)
    if pool_wait is not None:
        return pool_wait
    return Stall("queue", f"{count}: waiting for the run queue to launch them (it dequeues when the daemon ticks)")


def _limit_applies(value: object, tag_value: str) -> bool:
    """A tag limit's ``value``: absent or ``applyLimitPerUniqueValue`` counts per value, else one value only."""
    return value is None or isinstance(value, dict) or value == tag_value


def _start_wait(instance: dg.DagsterInstance, starting: Sequence[dg.DagsterRun], now: float) -> Stall:
    records = instance.get_run_records(filters=dg.RunsFilter(run_ids=[run.run_id for run in starting]))
    launched = [record.create_timestamp.timestamp() for record in records]
    waited = now - min(launched) if launched else 0.0
    launcher = type(instance.run_launcher).__name__
    runs = ", ".join(sorted(_chunk_label(run) for run in starting))
    if waited >= NO_WORKER_SECONDS:
        return Stall(
            "worker",
            f"{runs} launched {waited:.0f} s ago and no worker has started them ({launcher}: "
            "is a worker running and listening on the runs' queue?)",
        )
    return Stall("launch", f"{runs} launched, waiting for their run processes to start ({launcher})")


class StallWatch:
    """Follows one render's progress; once it has not moved for ``stall_seconds``, says why (``reason``)."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        daemon_problem: Callable[[], str | None] | None = None,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        self.instance = instance
        self.daemon_problem = daemon_problem or (lambda: None)
        self.stall_seconds = stall_seconds
        self.reason: Stall | None = None
        self._signature: object = None
        self._moved = time.monotonic()
        self._next_explanation = 0.0

    def observe(self, frames_done: int, runs: Sequence[dg.DagsterRun]) -> Stall | None:
        """Record the render's state now; the reason it waits once it has not moved for ``stall_seconds``."""
        now = time.monotonic()
        signature = (frames_done, tuple(sorted((run.run_id, run.status.value) for run in runs)))
        if signature != self._signature:
            self._signature, self._moved, self.reason = signature, now, None
            return None
        if now - self._moved < self.stall_seconds:
            return None
        if now >= self._next_explanation:
            self._next_explanation = now + EXPLAIN_EVERY_SECONDS
            try:
                self.reason = explain(self.instance, runs, self.daemon_problem())
            except Exception:  # an explanation that cannot be read never stops the render
                self.reason = None
        return self.reason

    @property
    def stalled_seconds(self) -> float:
        return time.monotonic() - self._moved
