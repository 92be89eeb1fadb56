"""`helios-pipeline ui` driven the way the UI drives it: over the webserver's GraphQL API.

A user opens the UI, adds a render partition and launches a backfill of the plan, the chunks,
the concat and the final video; the chunk partitions turn green and the final video follows.
These are the mutations and queries the UI sends for those clicks, against a real webserver and
the project's daemon started by `helios-pipeline ui`; Ctrl-C then stops both and leaves nothing.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from helios_pipeline.dagster_defs.registry import register_spec_file
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.scratch import UI_TEMP_PREFIX
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import frame_indices
from helios_pipeline_tests.helpers import (
    CHUNK,
    Ui,
    backfill_runs,
    chunk_runs,
    deployment_processes,
    describe,
    final_video,
    render_runs,
    running_ui,
    wait_for,
    wait_until_up,
    write_spec,
)

pytestmark = pytest.mark.slow

FRAMES = 45
ASSETS = ("render_plan", "chunk_video", "concat_video", "mixed_video")


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[Ui]:
    with running_ui(tmp_path, max_chunks=2) as started:
        yield started


ADD_PARTITION = """
mutation($selector: RepositorySelector!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: "renders", partitionKey: $key) {
    __typename
    ... on PythonError { message }
  }
}"""

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""

BACKFILL_STATUS = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }"""

PARTITION_STATS = """
query($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { partitionStats { numMaterialized numFailed } }
  }
}"""


def test_ui_backfill_renders_the_chunks_then_the_final_video_and_ctrl_c_stops_everything(ui: Ui) -> None:
    selector = wait_until_up(ui)
    storage = RenderStorage(location=ui.env["HELIOS_STORAGE"])
    spec = write_spec(ui.root / "specs", "ui-render", COMPOSITIONS / "frame_raf", frame_count=FRAMES)
    key, _ = register_spec_file(storage, spec, 2)

    added = ui.graphql(ADD_PARTITION, selector=selector, key=key)["addDynamicPartition"]
    assert added["__typename"] == "AddDynamicPartitionSuccess", added
    params = {"assetSelection": [{"path": [name]} for name in ASSETS], "partitionNames": [key]}
    launched = ui.graphql(LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def ended() -> str | None:
        status = ui.graphql(BACKFILL_STATUS, id=backfill_id)["partitionBackfillOrError"]["status"]
        return status if status not in ("REQUESTED", "CANCELING") else None

    assert wait_for(ended, 180, f"backfill {backfill_id}", 0.5) == "COMPLETED_SUCCESS", ui.log()

    # what the asset catalog shows: both chunk partitions green, the final video materialised
    stats = {name: ui.graphql(PARTITION_STATS, path=[name])["assetNodeOrError"]["partitionStats"] for name in ASSETS}
    assert stats["chunk_video"] == {"numMaterialized": 2, "numFailed": 0}
    assert stats["mixed_video"] == {"numMaterialized": 1, "numFailed": 0}
    chunks = chunk_runs(backfill_runs(ui.instance, backfill_id))
    assert sorted(chunks) == ["000", "001"] and all(len(runs) == 1 for runs in chunks.values())
    assert all(CHUNK in runs[0].dagster_run.asset_selection for runs in chunks.values())
    assert frame_indices(final_video(ui.instance, key)) == list(range(FRAMES))

    os.killpg(ui.process.pid, signal.SIGINT)  # Ctrl-C in the terminal running `helios-pipeline ui`
    assert ui.process.wait(timeout=60) == 0, ui.log()
    assert not deployment_processes(ui.home), describe(deployment_processes(ui.home))
    assert not list(ui.scratch.iterdir()), "the webserver's and daemon's temporary folder must go with them"


def test_a_ui_killed_outright_takes_its_webserver_and_daemon_with_it(ui: Ui) -> None:
    """SIGKILL (or the out-of-memory killer) on `helios-pipeline ui` alone: its webserver and daemon, each in a
    session of its own, stop themselves and what they started, instead of running on, orphaned, holding the port
    and beating on the instance."""
    wait_until_up(ui)
    ui.process.kill()
    ui.process.wait(timeout=10)
    wait_for(lambda: not deployment_processes(ui.home), 30, "the webserver and the daemon to stop", 0.5)
    assert not ui.instance.get_daemon_heartbeats(), "a stopped daemon's heartbeats would make a CLI wait on it"
    (folder,) = ui.scratch.iterdir()  # the killed UI's temporary folder, removed by the next UI on this host
    assert folder.name.startswith(f"{UI_TEMP_PREFIX}{ui.process.pid}@"), folder.name
    assert not list(folder.rglob("*")), "what the webserver and the daemon left in it"


def test_a_spec_dropped_into_the_inbox_is_rendered_to_the_final_video_with_no_click(ui: Ui) -> None:
    wait_until_up(ui)
    inbox = Path(ui.env["HELIOS_INBOX"])
    spec = write_spec(ui.root / "drafts", "dropped", COMPOSITIONS / "frame_raf", frame_count=FRAMES)
    spec.replace(inbox / spec.name)  # appears whole, as a user's save or move would make it

    def final_recorded() -> bool:
        assert ui.process.poll() is None, ui.log()
        return "dropped" in ui.instance.get_materialized_partitions(dg.AssetKey("mixed_video"))

    wait_for(final_recorded, 180, "the dropped spec's final video")

    def runs_ended() -> list[dg.DagsterRun] | None:
        runs = [record.dagster_run for record in render_runs(ui.instance, "dropped")]
        return runs if all(run.is_finished for run in runs) else None

    runs = wait_for(runs_ended, 60, "the render's runs to end")
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
    selections = sorted(sorted(key.to_user_string() for key in run.asset_selection) for run in runs)
    assert selections == [["chunk_video"], ["chunk_video"], ["concat_video", "mixed_video"], ["render_plan"]]
    assert frame_indices(final_video(ui.instance, "dropped")) == list(range(FRAMES))
    assert not ui.instance.get_backfills(), "the inbox path needs no backfill"
