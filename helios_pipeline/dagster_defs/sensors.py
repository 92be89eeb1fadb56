"""Triggers: the inbox sensor, the planner of scheduled renders, and the automation sensor that finishes renders.

Each trigger registers a render (spec snapshot + a `renders` partition) and requests its plan.
Declarative automation then materialises chunks -> concat + mixed video, each chunk its own run.
"""

import hashlib
import json
from pathlib import Path

import dagster as dg

from helios_pipeline.dagster_defs.assets import SETTINGS, render_plan, renders
from helios_pipeline.dagster_defs.inbox import Inbox, inbox_specs
from helios_pipeline.dagster_defs.names import PLAN_JOB, RENDER_TAG
from helios_pipeline.dagster_defs.registry import register_spec_file
from helios_pipeline.dagster_defs.schedules import register_render_job
from helios_pipeline.dagster_defs.settings import sensor_interval_seconds, trigger_seconds
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.spec import SpecError, load_spec, sanitize_key

TRIGGER_INTERVAL_S = sensor_interval_seconds(trigger_seconds())
"""Every sensor's ``minimum_interval_seconds``: a second under HELIOS_TRIGGER_SECONDS, so that each round of the
daemon's loops (every HELIOS_TRIGGER_SECONDS) evaluates it."""


def _content_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@dg.sensor(
    name="composition_inbox",
    minimum_interval_seconds=TRIGGER_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=[render_plan],
    description="Each new or changed spec in the inbox folder (HELIOS_INBOX, default compositions/) becomes "
    "a render partition and is rendered through to the final video. Malformed specs, and specs beyond the "
    "deployment's limits (HELIOS_MAX_FRAMES, HELIOS_MAX_DURATION, HELIOS_MAX_PIXELS), are reported and skipped.",
)
def composition_inbox(context: dg.SensorEvaluationContext, storage: RenderStorage, inbox: Inbox) -> dg.SensorResult:
    state = json.loads(context.cursor) if context.cursor else {}
    seen: dict[str, str] = state.get("files", {})  # file name -> content hash last handled
    owners: dict[str, str] = state.get("owners", {})  # render key -> the inbox file that registered it
    folder = inbox.path
    present = {path.name for path in inbox_specs(folder)} if folder.is_dir() else set()
    owners = {key: name for key, name in owners.items() if name in present}  # deleted files free their keys
    new_keys: list[str] = []
    requests: list[dg.RunRequest] = []
    skipped: list[str] = []
    for path in inbox_specs(folder) if folder.is_dir() else []:
        digest = _content_hash(path)
        if seen.get(path.name) == digest:
            continue
        seen[path.name] = digest  # a malformed file is reported once, until it changes
        try:
            spec = load_spec(path)
            if spec.schedule:
                continue  # scheduled specs render on their schedule, not on arrival
            owner = owners.get(spec.name)
            if owner is not None and owner != path.name:
                raise SpecError(str(path), [("name", f"render {spec.name!r} already comes from {owner}; rename one")])
            key, _ = register_spec_file(storage, path, SETTINGS.max_chunks, instance=context.instance)
        except (SpecError, ValueError, OSError) as exc:
            skipped.append(f"{path.name}: {exc}")
            context.log.warning(f"skipped {path}: {exc}")
            continue
        owners[key] = path.name
        # asked only when a spec changed (opening the instance costs the code server ~0.08 s of CPU every 5 s,
        # and most ticks find nothing new), and about this key only: the instance keeps every render ever added
        if key not in new_keys and not context.instance.has_dynamic_partition(renders.name, key):
            new_keys.append(key)
        # a new or changed spec: (re-)plan; automation renders the chunks, and a changed spec's new
        # fingerprint marks the old chunks stale
        requests.append(dg.RunRequest(run_key=f"{key}:{digest}", partition_key=key, asset_selection=[render_plan.key]))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[renders.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps({"files": seen, "owners": owners}, sort_keys=True),
        skip_reason="; ".join(skipped) if skipped and not (requests or new_keys) else None,
    )


plan_render_job = dg.define_asset_job(
    PLAN_JOB, selection=[render_plan], partitions_def=renders, description="Plans one registered render."
)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[register_render_job],
    request_job=plan_render_job,
    minimum_interval_seconds=TRIGGER_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Plans each render a schedule has registered (schedules cannot add partitions, so their tick "
    "registers the render in a run, and this plans it once that run has succeeded).",
)
def plan_registered_render(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
    run = context.dagster_run
    config = run.run_config.get("ops", {}).get("register_render", {}).get("config", {})
    key = sanitize_key(config["render_key"]) if config.get("render_key") else run.tags.get(RENDER_TAG)
    if not key:
        return dg.SkipReason(f"run {run.run_id} names no render (no render_key in its config)")
    return dg.RunRequest(run_key=f"plan:{key}", partition_key=key, tags={RENDER_TAG: key})


render_automation = dg.AutomationConditionSensorDefinition(
    "render_automation",
    target=dg.AssetSelection.groups("helios"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=TRIGGER_INTERVAL_S,
    emit_backfills=False,
    description="Runs chunks -> concat -> mixed video for every planned render (one run per chunk).",
)
