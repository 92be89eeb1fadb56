"""How renders start without a click: the inbox sensor, scheduled renders and declarative automation.

Sensors and schedules are evaluated with Dagster's test contexts against a real (sqlite)
instance; automation with ``dg.evaluate_automation_conditions`` over the code location's own
``Definitions``. No Chromium here: materialisations are reported as runless events.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import yaml
from dagster._core.execution.backfill import BulkActionStatus

from helios_pipeline.dagster_defs import assets, sensors
from helios_pipeline.dagster_defs import schedules as schedules_module
from helios_pipeline.dagster_defs.assets import chunk_video, concat_video, mixed_video, render_plan, renders
from helios_pipeline.dagster_defs.definitions import defs
from helios_pipeline.dagster_defs.inbox import Inbox
from helios_pipeline.dagster_defs.runner import launch_backfill
from helios_pipeline.dagster_defs.settings import Settings
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.helpers import run

REPO = Path(__file__).resolve().parents[1]
CHUNK_KEYS = assets.chunk_partitions.get_partitions_def_for_dimension("chunk").get_partition_keys()
MAX_CHUNKS = len(CHUNK_KEYS)
RENDER_ASSETS = [render_plan, chunk_video, concat_video, mixed_video]


def write_spec(folder: Path, file_name: str, **fields: object) -> Path:
    data = {
        "composition": str(COMPOSITIONS / "frame_raf"),
        "width": 128,
        "height": 128,
        "fps": 30,
        "frame_count": 20,
        "concurrency": 2,
        "output": str(folder / "out" / f"{Path(file_name).stem}.mp4"),
        **fields,
    }
    path = folder / file_name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def storage(tmp_path: Path) -> RenderStorage:
    return RenderStorage(location=str(tmp_path / "storage"))


@pytest.fixture
def inbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty inbox folder the sensor (and the scheduled-render op) read through SETTINGS."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    settings = Settings(storage=tmp_path / "storage", inbox=folder, max_chunks=MAX_CHUNKS)
    monkeypatch.setattr(sensors, "SETTINGS", settings)
    return folder


def tick(instance: dg.DagsterInstance, storage: RenderStorage, cursor: str | None) -> dg.SensorResult:
    resources = {"storage": storage, "inbox": Inbox(folder=str(sensors.SETTINGS.inbox))}
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = sensors.composition_inbox(context)
    assert isinstance(result, dg.SensorResult)
    return result


def added_keys(result: dg.SensorResult) -> list[str]:
    keys = []
    for request in result.dynamic_partitions_requests or []:
        assert isinstance(request, dg.AddDynamicPartitionsRequest)
        assert request.partitions_def_name == renders.name
        keys += request.partition_keys
    return keys


def skip_message(result: dg.SensorResult) -> str:
    return (result.skip_reason.skip_message or "") if result.skip_reason else ""


def warnings_logged(capfd: pytest.CaptureFixture[str]) -> str:
    """The sensor's log lines so far (Dagster's log manager writes them to stderr)."""
    captured = capfd.readouterr()
    return captured.err + captured.out


def apply(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    """What the sensor daemon does with a tick's partition requests."""
    instance.add_dynamic_partitions(renders.name, added_keys(result))


# --- the inbox sensor ---------------------------------------------------------------------------


def test_new_spec_adds_a_partition_and_snapshots_it(
    inbox: Path, instance: dg.DagsterInstance, storage: RenderStorage
) -> None:
    write_spec(inbox, "intro.yaml")

    result = tick(instance, storage, None)

    assert added_keys(result) == ["intro"]
    (request,) = result.run_requests
    assert request.partition_key == "intro" and request.asset_selection == [render_plan.key], "the sensor plans it"
    snapshot = storage.load_spec("intro")
    assert snapshot.name == "intro" and snapshot.total_frames == 20 and snapshot.concurrency == 2
    assert snapshot.composition == str(COMPOSITIONS / "frame_raf" / "index.html")
    apply(instance, result)

    again = tick(instance, storage, result.cursor)
    assert added_keys(again) == [] and not again.run_requests, "the same unchanged file must not render twice"


def test_changed_spec_requests_a_new_plan(inbox: Path, instance: dg.DagsterInstance, storage: RenderStorage) -> None:
    spec_file = write_spec(inbox, "intro.yaml")
    first = tick(instance, storage, None)
    apply(instance, first)

    write_spec(inbox, "intro.yaml", frame_count=24)
    changed = tick(instance, storage, first.cursor)

    assert added_keys(changed) == []
    assert len(changed.run_requests) == 1
    request = changed.run_requests[0]
    assert request.partition_key == "intro"
    assert request.asset_selection == [render_plan.key]
    assert sensors._content_hash(spec_file) in request.run_key
    assert storage.load_spec("intro").total_frames == 24, "the snapshot follows the changed file"

    assert not tick(instance, storage, changed.cursor).run_requests


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("composition: x\nwidth: 1\nheight: 1\nfps: 1\nframe_count: 1\ncolour: red\n", "colour: unknown key"),
        ("name: [unclosed\nwidth: 128\n", "not valid YAML"),
    ],
    ids=["unknown-key", "invalid-yaml"],
)
def test_malformed_spec_is_reported_once_and_skipped(
    inbox: Path,
    instance: dg.DagsterInstance,
    storage: RenderStorage,
    capfd: pytest.CaptureFixture[str],
    text: str,
    reason: str,
) -> None:
    (inbox / "broken.yaml").write_text(text, encoding="utf-8")

    result = tick(instance, storage, None)  # must not raise

    message = skip_message(result)
    assert "broken.yaml" in message and reason in message, message
    assert added_keys(result) == [] and not result.run_requests
    assert "broken.yaml" in warnings_logged(capfd)
    assert not (storage.root / "renders").exists()

    again = tick(instance, storage, result.cursor)
    assert not skip_message(again), "an unchanged malformed file is reported once"
    assert "broken.yaml" not in warnings_logged(capfd)


def test_malformed_spec_beside_a_good_one_does_not_stop_it(
    inbox: Path, instance: dg.DagsterInstance, storage: RenderStorage, capfd: pytest.CaptureFixture[str]
) -> None:
    (inbox / "broken.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    write_spec(inbox, "good.yaml")

    result = tick(instance, storage, None)

    assert added_keys(result) == ["good"]
    logged = warnings_logged(capfd)
    assert "broken.yaml" in logged and "not valid YAML" in logged, "the broken file is logged in the tick"


def test_sensor_ignores_scheduled_specs(inbox: Path, instance: dg.DagsterInstance, storage: RenderStorage) -> None:
    write_spec(inbox, "nightly.yaml", schedule="0 6 * * *")

    result = tick(instance, storage, None)

    assert added_keys(result) == [] and not result.run_requests and not skip_message(result)
    assert not storage.has_spec("nightly")


# --- scheduled renders ----------------------------------------------------------------------------


def test_schedule_tick_registers_a_dated_render(
    inbox: Path, instance: dg.DagsterInstance, storage: RenderStorage
) -> None:
    write_spec(inbox, "nightly.yaml", schedule="0 6 * * *", timezone="Europe/Berlin")
    write_spec(inbox, "plain.yaml")

    schedules = schedules_module.build_schedules(inbox)

    assert len(schedules) == 1
    schedule = schedules[0]
    assert schedule.cron_schedule == "0 6 * * *"
    assert schedule.execution_timezone == "Europe/Berlin"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == schedules_module.register_render_job.name

    when = datetime(2025, 3, 4, 6, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    data = schedule.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=when))
    assert data.run_requests is not None and len(data.run_requests) == 1
    request = data.run_requests[0]
    assert request.run_key == "nightly-20250304-0600"

    result = schedules_module.register_render_job.execute_in_process(
        run_config=request.run_config, instance=instance, resources={"storage": storage}
    )

    assert result.success
    assert instance.get_dynamic_partitions(renders.name) == ["nightly-20250304-0600"]
    snapshot = storage.load_spec("nightly-20250304-0600")
    assert snapshot.name == "nightly-20250304-0600"
    assert snapshot.output_path.name == "nightly-20250304-0600.mp4"
    assert snapshot.output_path.parent == inbox / "out"

    # the run's success is what plans the render (schedules cannot request a new partition's plan)
    context = dg.build_run_status_sensor_context(
        sensor_name=sensors.plan_registered_render.name,
        dagster_event=result.get_run_success_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    )
    plan_request = sensors.plan_registered_render(context)
    assert isinstance(plan_request, dg.RunRequest)
    assert plan_request.partition_key == "nightly-20250304-0600"
    assert plan_request.job_name in (None, sensors.plan_render_job.name)


def test_definitions_include_the_schedules_of_the_inbox() -> None:
    scheduled = {schedule.name for schedule in defs.schedules or []}
    expected = {schedule.name for schedule in schedules_module.build_schedules(assets.SETTINGS.inbox)}
    assert scheduled == expected


# --- declarative automation -----------------------------------------------------------------------


def requested(result: dg.EvaluateAutomationConditionsResult) -> dict[str, set[str]]:
    found = {}
    for asset in RENDER_ASSETS:
        partitions = result.get_requested_partitions(asset.key)
        if partitions:
            found[asset.key.to_user_string()] = set(partitions)
    return found


def chunk_partition(render: str, chunk: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"render": render, "chunk": chunk})


def report(instance: dg.DagsterInstance, asset: dg.AssetsDefinition, partition: str) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset.key, partition=partition))


class Automation:
    """Evaluates the code location's automation conditions tick by tick, like the automation sensor."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance
        self.cursor: str | None = None

    def tick(self) -> dict[str, set[str]]:
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=self.instance, asset_selection=dg.AssetSelection.groups("helios"), cursor=self.cursor
        )
        self.cursor = result.cursor
        return requested(result)


def test_automation_renders_a_registered_render_stage_by_stage(instance: dg.DagsterInstance) -> None:
    automation = Automation(instance)
    assert automation.tick() == {}

    instance.add_dynamic_partitions(renders.name, ["r1"])
    assert automation.tick() == {}, "a new partition waits for its plan (from a sensor, the CLI or a backfill)"

    report(instance, render_plan, "r1")
    assert automation.tick() == {"chunk_video": {chunk_partition("r1", chunk) for chunk in CHUNK_KEYS}}

    for chunk in CHUNK_KEYS[:-1]:
        report(instance, chunk_video, chunk_partition("r1", chunk))
    assert automation.tick() == {}, "concat waits for every chunk of its render"

    report(instance, chunk_video, chunk_partition("r1", CHUNK_KEYS[-1]))
    assert automation.tick() == {"concat_video": {"r1"}, "mixed_video": {"r1"}}

    report(instance, concat_video, "r1")
    report(instance, mixed_video, "r1")
    assert automation.tick() == {}


def test_automation_requests_no_run_for_a_chunk_the_plan_left_unused(instance: dg.DagsterInstance) -> None:
    """A plan records its unused chunk partitions, then its own materialisation: an automation tick between the
    two saw the unused partitions updated, then the plan's new version, and started a run for each to do nothing
    (seen in the ten-render load test)."""
    automation = Automation(instance)
    automation.tick()
    instance.add_dynamic_partitions(renders.name, ["r1"])
    assert automation.tick() == {}

    assets.report_unused_chunks(  # the plan's first records...
        instance, "r1", used=2, fingerprint="f1", record_check=instance.report_runless_asset_event
    )
    assert automation.tick() == {}
    instance.report_runless_asset_event(  # ...then, a tick later, its materialisation (its version: the pictures')
        dg.AssetMaterialization(asset_key=render_plan.key, partition="r1", tags={"dagster/data_version": "f1"})
    )
    assert automation.tick() == {"chunk_video": {chunk_partition("r1", chunk) for chunk in CHUNK_KEYS[:2]}}


def test_automation_requests_no_mix_run_of_its_own_after_a_concat_and_mix_run(instance: dg.DagsterInstance) -> None:
    """Concat and mix run together; a tick that saw the run's concat but neither its mix nor the run in progress
    (ticks read the instance over seconds on a loaded machine) started a second, mix-only run (load test)."""
    automation = Automation(instance)
    automation.tick()
    instance.add_dynamic_partitions(renders.name, ["r1"])
    automation.tick()
    report(instance, render_plan, "r1")
    automation.tick()
    for chunk in CHUNK_KEYS:
        report(instance, chunk_video, chunk_partition("r1", chunk))
    assert automation.tick() == {"concat_video": {"r1"}, "mixed_video": {"r1"}}
    assert automation.tick() == {}

    report(instance, concat_video, "r1")  # the run's concat is recorded; its mix follows a moment later
    assert automation.tick() == {}, "the mix is already part of the concat's run"
    report(instance, mixed_video, "r1")
    assert automation.tick() == {}


def test_automation_renders_a_render_planned_before_its_first_evaluation(instance: dg.DagsterInstance) -> None:
    """A fresh deployment whose inbox sensor registered and planned a render before automation first ran."""
    instance.add_dynamic_partitions(renders.name, ["early"])
    report(instance, render_plan, "early")
    automation = Automation(instance)

    assert automation.tick() == {"chunk_video": {chunk_partition("early", chunk) for chunk in CHUNK_KEYS}}


def test_automation_leaves_other_renders_alone(instance: dg.DagsterInstance) -> None:
    automation = Automation(instance)
    automation.tick()
    instance.add_dynamic_partitions(renders.name, ["a", "b"])
    assert automation.tick() == {}
    report(instance, render_plan, "a")
    assert automation.tick() == {"chunk_video": {chunk_partition("a", chunk) for chunk in CHUNK_KEYS}}
    for chunk in CHUNK_KEYS:
        report(instance, chunk_video, chunk_partition("a", chunk))
    assert automation.tick() == {"concat_video": {"a"}, "mixed_video": {"a"}}


@pytest.mark.parametrize("ended", ["CANCELED", "COMPLETED_FAILED"])
def test_automation_leaves_a_render_alone_once_its_backfill_has_ended(instance: dg.DagsterInstance, ended: str) -> None:
    """A render driven by a backfill (the CLI's, or one launched in the UI) that was cancelled or failed.

    Automation must not pick up what the backfill left undone: a Ctrl-C'd render would otherwise be
    rendered after all, and a failed chunk retried behind the user's back.
    """
    automation = Automation(instance)
    automation.tick()
    instance.add_dynamic_partitions(renders.name, ["bf"])
    backfill_id = launch_backfill(instance, "bf", defs.resolve_asset_graph(), with_plan=False)
    report(instance, render_plan, "bf")  # the CLI plans in its own process once the backfill exists
    assert automation.tick() == {}, "everything after the plan belongs to the backfill"

    report(instance, chunk_video, chunk_partition("bf", CHUNK_KEYS[0]))  # one chunk done, then the backfill ends
    backfill = instance.get_backfill(backfill_id)
    assert backfill is not None
    instance.update_backfill(backfill.with_status(BulkActionStatus[ended]))

    assert automation.tick() == {}
    assert automation.tick() == {}


def test_automation_starts_no_concat_while_a_chunk_of_the_render_has_failed(
    instance: dg.DagsterInstance, storage: RenderStorage
) -> None:
    """A render rendered again: its previous chunks are still there when a chunk of the new version fails.

    The other chunks' updates must not start the concat: it would join the stale chunk, or refuse it,
    and the user would read the concat's complaint instead of the chunk's own error (issue 9).
    """
    automation = Automation(instance)
    instance.add_dynamic_partitions(renders.name, ["again"])
    report(instance, render_plan, "again")
    for chunk in CHUNK_KEYS:
        report(instance, chunk_video, chunk_partition("again", chunk))
    assert automation.tick() == {"concat_video": {"again"}, "mixed_video": {"again"}}
    report(instance, concat_video, "again")
    report(instance, mixed_video, "again")
    assert automation.tick() == {}

    # the new version: chunk 000's run fails (nothing is registered for it), the others are rendered again
    failed = run(instance, storage, [chunk_video], chunk_partition("again", CHUNK_KEYS[0]), raise_on_error=False)
    assert not failed.success
    for chunk in CHUNK_KEYS[1:]:
        report(instance, chunk_video, chunk_partition("again", chunk))
    assert automation.tick() == {}, "no concat while a chunk's latest run failed"

    report(instance, chunk_video, chunk_partition("again", CHUNK_KEYS[0]))  # rendered again, successfully
    assert automation.tick() == {"concat_video": {"again"}, "mixed_video": {"again"}}


# --- the code location loads ----------------------------------------------------------------------


def test_definitions_validate_from_the_repo_root() -> None:
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster)] if dagster.is_file() else [sys.executable, "-m", "dagster"]
    result = subprocess.run(
        [*command, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_partition_added_in_the_ui_plans_the_inbox_spec_of_that_name(
    tmp_path: Path, instance: dg.DagsterInstance, storage: RenderStorage, inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user adds partition `teaser` by hand: the plan registers inbox/teaser.yaml itself."""
    write_spec(inbox, "teaser.yaml")
    resources = {"storage": storage, "inbox": Inbox(folder=str(inbox))}
    instance.add_dynamic_partitions(renders.name, ["teaser", "ghost"])
    result = dg.materialize(RENDER_ASSETS, selection=[render_plan], partition_key="teaser", instance=instance,
                            resources=resources)  # fmt: skip
    assert result.success
    assert storage.load_spec("teaser").name == "teaser"
    # no snapshot and no inbox spec: a clear failure that names the render
    result = dg.materialize(RENDER_ASSETS, selection=[render_plan], partition_key="ghost", instance=instance,
                            resources=resources, raise_on_error=False)  # fmt: skip
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    message = failure.step_failure_data.error.message
    assert "render 'ghost' is not registered and no spec file ghost.yaml" in message
    assert f"{inbox / 'ui'} (HELIOS_UI_SPECS)" in message and f"{inbox} (HELIOS_INBOX)" in message


def plan_failure(instance: dg.DagsterInstance, resources: dict[str, object], key: str) -> str:
    result = dg.materialize(RENDER_ASSETS, selection=[render_plan], partition_key=key, instance=instance,
                            resources=resources, raise_on_error=False)  # fmt: skip
    assert not result.success
    return next(event for event in result.all_events if event.is_step_failure).step_failure_data.error.message


def test_a_spec_in_the_ui_folder_waits_for_its_partition_and_is_read_again_at_every_plan(
    instance: dg.DagsterInstance, storage: RenderStorage, inbox: Path
) -> None:
    """The UI's folder is not the sensor's: adding the partition by hand never races a registration."""
    ui_folder = inbox / "ui"
    ui_folder.mkdir()
    spec = write_spec(ui_folder, "clip.yaml", frame_count=20)
    idle = tick(instance, storage, None)
    assert added_keys(idle) == [] and not idle.run_requests and not storage.has_spec("clip")
    resources = {"storage": storage, "inbox": Inbox(folder=str(inbox))}
    instance.add_dynamic_partitions(renders.name, ["clip"])
    for frames in (20, 30):  # the person edits the spec and launches again
        write_spec(ui_folder, spec.name, frame_count=frames)
        assert dg.materialize(RENDER_ASSETS, selection=[render_plan], partition_key="clip", instance=instance,
                              resources=resources).success  # fmt: skip
        assert storage.load_spec("clip").frame_count == frames
    assert added_keys(tick(instance, storage, idle.cursor)) == [], "the sensor still ignores the UI's folder"
    instance.add_dynamic_partitions(renders.name, ["My Clip"])
    message = plan_failure(instance, resources, "My Clip")
    assert "partition 'My Clip'" in message and "add a partition named 'my-clip'" in message


def test_two_inbox_specs_with_the_same_name_do_not_overwrite_each_other(
    instance: dg.DagsterInstance, storage: RenderStorage, inbox: Path
) -> None:
    write_spec(inbox, "a.yaml", name="promo", frame_count=20)
    first = tick(instance, storage, None)
    assert added_keys(first) == ["promo"]
    write_spec(inbox, "b.yaml", name="promo", frame_count=40)
    second = tick(instance, storage, first.cursor)
    assert added_keys(second) == [] and not second.run_requests
    reason = second.skip_reason.skip_message if second.skip_reason else ""
    assert "b.yaml" in reason and "already comes from a.yaml" in reason
    assert storage.load_spec("promo").frame_count == 20, "the first file's render must stay intact"
