"""``helios-pipeline status``, run as a real process against a real instance the tests filled.

Renders are materialised through Dagster in this process (real Chromium and FFmpeg, tiny frames) on an
instance of its own DAGSTER_HOME; the CLI then reads that instance, as it would beside a running UI or
deployment: one done render, one whose chunk threw, one planned only, one registered and never planned,
one whose chunk run was cancelled.
The same reading is checked on a Postgres instance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from helios_pipeline.dagster_defs.assets import chunk_video, concat_video, mixed_video, render_plan
from helios_pipeline.dagster_defs.status import status_of
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.helpers import (
    chunk_key,
    open_instance,
    register,
    run,
    wait_for,
    write_instance_config,
    write_spec,
)
from helios_pipeline_tests.services import PostgresServer

REPO = Path(__file__).resolve().parents[1]
WORKER = "status-worker-a"
NOT_STARTED = dg.DagsterRunStatus.NOT_STARTED


@dataclass
class Filled:
    """An instance at ``home`` with renders in every settled state, and the environment that reaches it."""

    home: Path
    env: dict[str, str]
    instance: dg.DagsterInstance
    storage: RenderStorage


def status_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "helios_pipeline.cli", "status", *args],
        cwd=REPO,
        env={**env, "COLUMNS": "250", "TERM": "dumb"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def status_json(env: dict[str, str], *args: str) -> Any:
    result = status_cli(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def add_render(target: tuple[dg.DagsterInstance, RenderStorage, Path], name: str, page: str, **fields: Any) -> str:
    """Register ``name`` (a spec of ``page`` in the test compositions) the way the sensor and the CLI do."""
    instance, storage, specs = target
    return register(instance, storage, write_spec(specs, name, COMPOSITIONS / page, **fields))


def cancel_unstarted_chunk_run(instance: dg.DagsterInstance, render_key: str, chunk: str) -> None:
    """A chunk run not started yet, cancelled the way the CLI cancels a failed render's waiting runs."""
    partition = chunk_key(render_key, chunk)
    by_dimension = {f"dagster/partition/{name}": key for name, key in partition.keys_by_dimension.items()}
    tags = {"dagster/partition": str(partition), **by_dimension}
    run = dg.DagsterRun(job_name="__ASSET_JOB", asset_selection={chunk_video.key}, status=NOT_STARTED, tags=tags)
    instance.report_run_canceled(instance.add_run(run), message="canceled: the render was cancelled")


def instance_env(home: Path, storage: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DAGSTER_", "HELIOS_"))}
    return {**env, "DAGSTER_HOME": str(home), "HELIOS_STORAGE": str(storage)}


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filled]:
    folder = tmp_path_factory.mktemp("status")
    home, specs = folder / "home", folder / "specs"
    write_instance_config(home)
    storage = RenderStorage(location=str(folder / "storage"))
    instance = open_instance(home)
    target = (instance, storage, specs)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HELIOS_WORKER_ID", WORKER)
            done = add_render(target, "status-done", "frame_raf", frame_count=6, concurrency=2)
            run(instance, storage, [render_plan], done)
            for chunk in ("000", "001"):
                run(instance, storage, [chunk_video], chunk_key(done, chunk))
            run(instance, storage, [concat_video, mixed_video], done)

            # throws_late throws from frame 20 on: chunk 001 (frames 20..39) fails; chunk 000 is never run
            fails = add_render(target, "status-fails", "throws_late", frame_count=40, concurrency=2)
            run(instance, storage, [render_plan], fails)
            cancel_unstarted_chunk_run(instance, fails, "000")
            run(instance, storage, [chunk_video], chunk_key(fails, "001"), raise_on_error=False)

            planned = add_render(target, "status-planned", "frame_raf", frame_count=9, concurrency=3)
            run(instance, storage, [render_plan], planned)
            add_render(target, "status-new", "frame_raf", frame_count=12)
            cancelled = add_render(target, "status-cancelled", "frame_raf", frame_count=4, concurrency=1)
            run(instance, storage, [render_plan], cancelled)
            cancel_unstarted_chunk_run(instance, cancelled, "000")
        yield Filled(home, instance_env(home, folder / "storage"), instance, storage)
    finally:
        instance.dispose()


@pytest.fixture(scope="module")
def listed(filled: Filled) -> dict[str, dict[str, Any]]:
    """``status --json``: every render by name."""
    return {render["name"]: render for render in status_json(filled.env)}


@pytest.mark.slow
def test_the_list_shows_every_render_with_its_state(filled: Filled, listed: dict[str, dict[str, Any]]) -> None:
    states = {name: render["label"] for name, render in listed.items()}
    assert states == {  # in registration order
        "status-done": "done",
        "status-fails": "failed",
        "status-planned": "waiting 0/3 chunks",
        "status-new": "registered",
        "status-cancelled": "cancelled",
    }
    assert list(states) == ["status-done", "status-fails", "status-planned", "status-new", "status-cancelled"]
    assert listed["status-cancelled"]["error"] == "chunk 000: canceled: the render was cancelled"
    done = listed["status-done"]
    assert (done["chunks_done"], done["chunks"], done["frames"]) == (2, 2, 6)
    assert done["output"] == str(filled.home.parent / "specs" / "out" / "status-done.mp4")
    assert Path(done["output"]).is_file()
    assert done["error"] is None and done["chunk_details"] is None
    assert done["started"] is not None and 0 < done["wall_seconds"] < 600
    new = listed["status-new"]  # no plan: frames and output from the registered spec, no run yet
    assert (new["frames"], new["chunks"], new["started"], new["wall_seconds"]) == (12, None, None, None)
    assert new["output"] == str(filled.home.parent / "specs" / "out" / "status-new.mp4")
    assert "boom at the twentieth frame" in listed["status-fails"]["error"]


@pytest.mark.slow
def test_one_done_render_shows_its_chunks_with_worker_and_wall_time(filled: Filled) -> None:
    render = status_json(filled.env, "status-done")
    chunks = render["chunk_details"]
    assert [(c["chunk"], c["state"], c["frames"]) for c in chunks] == [("000", "done", 3), ("001", "done", 3)]
    assert all(c["worker"] == WORKER for c in chunks)
    assert all(0 < c["wall_seconds"] < render["wall_seconds"] for c in chunks)
    records = filled.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=chunk_video.key, asset_partitions=[str(chunk_key("status-done", "001"))]),
        limit=1,
    ).records
    assert chunks[1]["run_id"] == records[0].run_id
    assert chunks[1]["wall_seconds"] == round(records[0].asset_materialization.metadata["wall_seconds"].value, 2)


@pytest.mark.slow
def test_a_failed_render_shows_the_chunk_that_failed_and_why(filled: Filled) -> None:
    render = status_json(filled.env, "status-fails")
    assert render["state"] == "failed"
    assert render["error"].startswith("chunk 001: ") and "frame 20" in render["error"], render["error"]
    chunks = {c["chunk"]: c for c in render["chunk_details"]}
    # chunk 000's run was cancelled before it started: the render still shows the error that ended it
    assert chunks["000"]["state"] == "cancelled" and "the render was cancelled" in chunks["000"]["error"]
    failed = chunks["001"]
    assert failed["state"] == "failed" and "boom at the twentieth frame" in failed["error"]
    assert failed["worker"] == WORKER  # from the run's tag: a failed chunk has no metadata
    run = filled.instance.get_run_by_id(failed["run_id"])
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
    assert failed["wall_seconds"] > 0


@pytest.mark.slow
def test_the_table_names_renders_states_and_errors(filled: Filled) -> None:
    result = status_cli(filled.env)
    assert result.returncode == 0, result.stderr
    for text in ("status-done", "done", "status-fails", "failed", "waiting 0/3 chunks", "registered", "boom"):
        assert text in result.stdout, (text, result.stdout)
    detail = status_cli(filled.env, "status-done")
    assert detail.returncode == 0, detail.stderr
    assert WORKER in detail.stdout and "3/3" in detail.stdout, detail.stdout


@pytest.mark.slow
def test_an_unknown_render_exits_2_naming_it_and_close_names(filled: Filled) -> None:
    result = status_cli(filled.env, "status-don")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "'status-don'" in result.stderr and "status-done" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_status_reads_a_postgres_instance(tmp_path: Path, postgres_server: PostgresServer) -> None:
    home = tmp_path / "home"
    home.mkdir()
    config = {"storage": postgres_server.storage_config(postgres_server.create_database())}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    storage = RenderStorage(location=str(tmp_path / "storage"))
    instance = open_instance(home)
    target = (instance, storage, tmp_path)
    try:
        key = add_render(target, "pg-planned", "frame_raf", frame_count=4, concurrency=2)
        run(instance, storage, [render_plan], key)
        add_render(target, "pg-new", "frame_raf", frame_count=5)
    finally:
        instance.dispose()

    listed = status_json(instance_env(home, tmp_path / "storage"))

    assert [(r["name"], r["label"], r["frames"]) for r in listed] == [
        ("pg-planned", "waiting 0/2 chunks", 4),
        ("pg-new", "registered", 5),
    ]
    assert listed[0]["started"] is not None  # the plan run


MATERIALISE_CHUNK = """
import sys
from pathlib import Path
from helios_pipeline.dagster_defs.assets import chunk_video
from helios_pipeline.dagster_defs.status import status_of
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline_tests.helpers import chunk_key, open_instance, run

home, storage, key, chunk = sys.argv[1:]
with open_instance(Path(home)) as instance:
    run(instance, RenderStorage(location=storage), [chunk_video], chunk_key(key, chunk))
"""


@pytest.mark.slow
def test_a_chunk_rendering_in_another_process_shows_as_rendering_with_its_progress(tmp_path: Path) -> None:
    home, storage_dir = tmp_path / "home", tmp_path / "storage"
    write_instance_config(home)
    storage = RenderStorage(location=str(storage_dir))
    instance = open_instance(home)
    try:
        key = add_render((instance, storage, tmp_path), "status-live", "slow", frame_count=60, concurrency=2)
        run(instance, storage, [render_plan], key)
        # chunk 001 (frames 30..59, ~0.1 s of work each) rendered by another process, as a run worker would
        worker = subprocess.Popen(
            [sys.executable, "-c", MATERIALISE_CHUNK, str(home), str(storage_dir), key, "001"],
            cwd=REPO,
            env={**instance_env(home, storage_dir), "HELIOS_WORKER_ID": WORKER},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            progress = storage_dir / "renders" / key / "progress" / "001.json"
            wait_for(lambda: progress.is_file() and json.loads(progress.read_text())["frames"] > 0, 120, "progress")
            live = status_of(instance, key, storage)
            _, errors = worker.communicate(timeout=180)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        assert worker.returncode == 0, errors[-3000:]
        after = status_of(instance, key, storage)
    finally:
        instance.dispose()

    assert live.label == "rendering 0/2 chunks" and live.error is None
    assert live.started is not None and live.wall_seconds is not None
    pending, rendering = live.chunk_details
    assert (pending.chunk, pending.state, pending.run_id) == ("000", "pending", None)
    assert (rendering.chunk, rendering.state, rendering.of_frames, rendering.worker) == ("001", "rendering", 30, WORKER)
    assert 0 < rendering.frames < 30 and rendering.run_id is not None
    # once it has ended: one of two chunks done, nothing in flight, nothing failed
    assert after.label == "waiting 1/2 chunks"
    chunks = [(c.chunk, c.state, c.worker) for c in after.chunk_details]
    assert chunks == [("000", "pending", None), ("001", "done", WORKER)]
    assert after.chunk_details[1].run_id == rendering.run_id
