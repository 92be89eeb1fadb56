"""Each step's output is captured for the UI and copied on to the run worker's output without helper processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg

from helios_pipeline.dagster_defs.private_api import ThreadMirroredComputeLogManager

REPO = Path(__file__).resolve().parents[1]

STEP = """
import subprocess, sys, psutil
from helios_pipeline.dagster_defs.private_api import ThreadMirroredComputeLogManager

manager = ThreadMirroredComputeLogManager(sys.argv[1])
with manager.capture_logs(["run", "compute_logs", "step"]):
    print("from the step", flush=True)
    print("a warning of the step", file=sys.stderr, flush=True)
    subprocess.run(["echo", "from a child of the step"], check=True)
    print("helpers:", sorted(p.name() for p in psutil.Process().children(recursive=True)), flush=True)
print("after the step", flush=True)
"""


def test_a_steps_output_is_captured_and_mirrored_by_a_thread_of_the_run_worker(tmp_path: Path) -> None:
    worker = subprocess.run(
        [sys.executable, "-c", STEP, str(tmp_path)], capture_output=True, text=True, timeout=60, check=True
    )
    # mirrored on to the worker's own output, in order, all of it before the step's end
    assert worker.stdout.splitlines() == [
        "from the step",
        "from a child of the step",
        "helpers: []",  # Dagster's own manager: ['python', 'python', 'tail', 'tail']
        "after the step",
    ]
    assert worker.stderr.splitlines() == ["a warning of the step"]
    # and captured for the UI, the step's output only
    manager = ThreadMirroredComputeLogManager(str(tmp_path))
    key = ["run", "compute_logs", "step"]
    assert manager.is_capture_complete(key)
    log = manager.get_log_data(key)
    assert log.stdout.decode().splitlines() == ["from the step", "from a child of the step", "helpers: []"]
    assert log.stderr.decode().splitlines() == ["a warning of the step"]


def test_the_projects_instance_settings_use_it_in_dagsters_place_for_compute_logs(tmp_path, monkeypatch) -> None:
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        manager = instance.compute_log_manager
        assert isinstance(manager, ThreadMirroredComputeLogManager)
        assert Path(manager._base_dir) == tmp_path / "storage"
