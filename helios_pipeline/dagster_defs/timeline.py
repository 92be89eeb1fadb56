"""A render's critical path through Dagster, from the runs' own event timestamps.

Dagster's fixed cost per render is spread over stage boundaries (a daemon loop that launches
runs, the run queue, a fresh run worker's start, the final run's work). Each boundary leaves an
event in the instance, so the cost can be read back from any finished render without timers in
the code: ``render_timeline`` lists the milestones of the slowest path (the last chunk to arrive
gates the final run), the benchmark prints the gaps between them and the tests bound them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg

from helios_pipeline.dagster_defs.names import CHUNK_PARTITION_TAG, PARTITION_TAG, PLAN_ASSET, RENDER_PARTITION_TAG

RUN_MILESTONES = (
    ("queued", dg.DagsterEventType.RUN_ENQUEUED),
    ("dequeued", dg.DagsterEventType.RUN_DEQUEUED),
    ("starting", dg.DagsterEventType.RUN_STARTING),
    ("started", dg.DagsterEventType.RUN_START),
    ("step started", dg.DagsterEventType.STEP_START),
    ("materialised", dg.DagsterEventType.ASSET_MATERIALIZATION),
    ("checked", dg.DagsterEventType.ASSET_CHECK_EVALUATION),
    ("succeeded", dg.DagsterEventType.RUN_SUCCESS),
)


@dataclass(frozen=True)
class RunEvents:
    """One run's milestones: the first event of each kind, except materialisations and checks (the last)."""

    run_id: str
    kind: str
    """``plan``, ``chunk NNN`` or ``final`` (concat + mix)."""
    created: float
    times: dict[str, float]


@dataclass(frozen=True)
class Milestone:
    stage: str
    """``render``, ``plan``, ``last chunk (NNN)``, ``final`` or ``caller``."""
    event: str
    timestamp: float

    @property
    def label(self) -> str:
        return f"{self.stage} {self.event}"


def run_events(instance: dg.DagsterInstance, run: dg.DagsterRun) -> RunEvents:
    times: dict[str, float] = {}
    kinds = {event_type: label for label, event_type in RUN_MILESTONES}
    for record in instance.all_logs(run.run_id):
        event = record.dagster_event
        if event is None or event.event_type not in kinds:
            continue
        label = kinds[event.event_type]
        if label in ("materialised", "checked"):
            times[label] = max(times.get(label, 0.0), record.timestamp)
        else:
            times.setdefault(label, record.timestamp)
    record = instance.get_run_record_by_id(run.run_id)
    created = record.create_timestamp.timestamp() if record is not None else min(times.values(), default=0.0)
    return RunEvents(run.run_id, _kind(run), created, times)


def _kind(run: dg.DagsterRun) -> str:
    if CHUNK_PARTITION_TAG in run.tags:
        return f"chunk {run.tags[CHUNK_PARTITION_TAG]}"
    selection = run.asset_selection or set()
    return "plan" if selection == {PLAN_ASSET} else "final"


def render_runs(instance: dg.DagsterInstance, render_key: str) -> list[RunEvents]:
    """Every run of the render (plan, chunks, final), oldest first."""
    runs = [
        *instance.get_runs(filters=dg.RunsFilter(tags={RENDER_PARTITION_TAG: render_key})),
        *instance.get_runs(filters=dg.RunsFilter(tags={PARTITION_TAG: render_key})),
    ]
    return sorted((run_events(instance, run) for run in runs), key=lambda events: events.created)


def critical_path(
    runs: Iterable[RunEvents], started: float, ended: float | None = None, backfill_ended: float | None = None
) -> list[Milestone]:
    """The milestones that bound the render's wall time, in order: the plan run's, the last chunk's, the final run's.

    ``started`` is when the render was asked for (the CLI's start); ``ended`` when its caller got the result;
    ``backfill_ended`` when the daemon recorded the render's backfill as done (the CLI waits for it when the
    daemon is its own, before stopping it).
    """
    runs = list(runs)
    path = [Milestone("render", "asked for", started)]
    for stage, run in _gating_runs(runs):
        path.append(Milestone(stage, "run created", run.created))
        path += [Milestone(stage, name, run.times[name]) for name, _ in RUN_MILESTONES if name in run.times]
    if backfill_ended is not None:
        path.append(Milestone("backfill", "ended", backfill_ended))
    if ended is not None:
        path.append(Milestone("caller", "returned", ended))
    return path


def time_of(path: list[Milestone], stage: str, event: str) -> float:
    """When the first milestone of a stage (``stage`` is a prefix: ``last chunk``) reached ``event``."""
    return next(m.timestamp for m in path if m.stage.startswith(stage) and m.event == event)


def _gating_runs(runs: list[RunEvents]) -> list[tuple[str, RunEvents]]:
    gating: list[tuple[str, RunEvents]] = []
    plans = [run for run in runs if run.kind == "plan"]
    chunks = [run for run in runs if run.kind.startswith("chunk") and "materialised" in run.times]
    finals = [run for run in runs if run.kind == "final"]
    if plans:
        gating.append(("plan", plans[-1]))
    if chunks:
        last = max(chunks, key=lambda run: run.times["materialised"])
        gating.append((f"last chunk ({last.kind.split()[1]})", last))
    if finals:
        gating.append(("final", finals[-1]))
    return gating


def stage_gaps(path: list[Milestone]) -> list[tuple[str, float]]:
    """Seconds from each milestone to the next, labelled ``a → b``."""
    return [
        (f"{before.label} → {after.label}", after.timestamp - before.timestamp)
        for before, after in itertools.pairwise(path)
    ]
