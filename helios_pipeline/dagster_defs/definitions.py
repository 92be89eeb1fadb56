"""The code location: ``dagster dev`` (workspace.yaml) and the CLI load ``defs`` from here."""

from __future__ import annotations

import dagster as dg

from helios_pipeline.dagster_defs.assets import (
    SETTINGS,
    chunk_video,
    concat_video,
    final_video_valid,
    mixed_video,
    render_plan,
)
from helios_pipeline.dagster_defs.inbox import Inbox
from helios_pipeline.dagster_defs.schedules import build_schedules, register_render_job
from helios_pipeline.dagster_defs.sensors import (
    composition_inbox,
    plan_registered_render,
    plan_render_job,
    render_automation,
)
from helios_pipeline.dagster_defs.settings import export_defaults
from helios_pipeline.dagster_defs.storage import RenderStorage

export_defaults()

defs = dg.Definitions(
    assets=[render_plan, chunk_video, concat_video, mixed_video],
    asset_checks=[final_video_valid],
    jobs=[register_render_job, plan_render_job],
    sensors=[composition_inbox, plan_registered_render, render_automation],
    schedules=build_schedules(SETTINGS.inbox),
    resources={
        "storage": RenderStorage(location=dg.EnvVar("HELIOS_STORAGE"), keep_days=dg.EnvVar("HELIOS_KEEP_DAYS")),
        "inbox": Inbox(folder=dg.EnvVar("HELIOS_INBOX"), ui_folder=dg.EnvVar("HELIOS_UI_SPECS")),
    },
    # one process per run: a chunk run is one step, and a step subprocess would only add start-up time
    executor=dg.in_process_executor,
)
