"""Scheduled renders: one schedule per inbox spec with a ``schedule:``, and the job its ticks run.

Schedules cannot add dynamic partitions, so each tick runs the small ``register_render_job``
(snapshot the spec, add the partition); the ``plan_registered_render`` sensor plans it afterwards.
"""

from datetime import datetime
from pathlib import Path

import dagster as dg

from helios_pipeline.dagster_defs.inbox import inbox_specs
from helios_pipeline.dagster_defs.names import RENDER_TAG
from helios_pipeline.dagster_defs.partitions import SETTINGS, renders
from helios_pipeline.dagster_defs.registry import register_spec_file
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.spec import SpecError, load_spec, sanitize_key


@dg.op(
    config_schema={"spec_path": str, "render_key": str},
    description="Register a scheduled render: snapshot its spec and add its `renders` partition.",
)
def register_render(context: dg.OpExecutionContext, storage: RenderStorage) -> str:
    spec_path = Path(context.op_config["spec_path"])
    key, spec = register_spec_file(
        storage, spec_path, SETTINGS.max_chunks, context.op_config["render_key"], context.instance
    )
    context.instance.add_dynamic_partitions(renders.name, [key])
    context.log.info(f"registered render {key} ({spec.total_frames} frames) from {spec_path}")
    return key


@dg.job(description="Registers one render partition; `plan_registered_render` then plans it.")
def register_render_job() -> None:
    register_render()


def scheduled_render_key(name: str, when: datetime) -> str:
    return sanitize_key(f"{name}-{when:%Y%m%d-%H%M}")


def build_schedules(inbox: Path) -> list[dg.ScheduleDefinition]:
    """One schedule per inbox spec that has a ``schedule:`` cron string (read when the code loads)."""
    schedules = []
    for path in inbox_specs(inbox) if inbox.is_dir() else []:
        try:
            spec = load_spec(path)
        except (SpecError, ValueError, OSError):
            continue  # the inbox sensor reports malformed specs
        if not spec.schedule:
            continue
        schedules.append(_schedule_for(path, spec.name, spec.schedule, spec.timezone))
    return schedules


def _schedule_for(path: Path, name: str, cron: str, timezone: str | None) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=f"render_{name.replace('-', '_')}",
        cron_schedule=cron,
        execution_timezone=timezone or "UTC",
        job=register_render_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Re-renders {path} on '{cron}'; each tick is a new render partition {name}-<date>.",
    )
    def _scheduled(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        key = scheduled_render_key(name, context.scheduled_execution_time)
        return dg.RunRequest(
            run_key=key,
            run_config={"ops": {"register_render": {"config": {"spec_path": str(path), "render_key": key}}}},
            tags={RENDER_TAG: key},
        )

    return _scheduled
