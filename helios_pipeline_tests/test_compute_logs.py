"""Each step's output is captured for the UI and copied on to the run worker's output without helper processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager

STEP = """
import subprocess, sys, psutil
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
if sys.argv[2] == "preloaded":
    import helios_pipeline.dagster_defs.run_worker  # what the warm launcher's fork server preloads

manager = LocalComputeLogManager(sys.argv[1])
with manager.capture_logs(["run", "compute_logs", "step"]):
    print("from the step", flush=True)
    print("a warning of the step", file=sys.stderr, flush=True)
    subprocess.run(["echo", "from a child of the step"], check=True)
    print("helpers:", sorted(p.name() for p in psutil.Process().children(recursive=True)), flush=True)
print("after the step", flush=True)
"""


def _step_in_a_worker(logs: Path, preload: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", STEP, str(logs), preload], capture_output=True, text=True, timeout=60, check=True
    )


def test_a_run_workers_step_output_is_captured_and_mirrored_by_a_thread(tmp_path: Path) -> None:
    worker = _step_in_a_worker(tmp_path, "preloaded")
    # mirrored on to the worker's own output, in order, all of it before the step's end
    assert worker.stdout.splitlines() == ["from the step", "from a child of the step", "helpers: []", "after the step"]
    assert worker.stderr.splitlines() == ["a warning of the step"]
    # and captured for the UI, the step's output only
    manager = LocalComputeLogManager(str(tmp_path))
    key = ["run", "compute_logs", "step"]
    assert manager.is_capture_complete(key)
    log = manager.get_log_data(key)
    assert log.stdout.decode().splitlines() == ["from the step", "from a child of the step", "helpers: []"]
    assert log.stderr.decode().splitlines() == ["a warning of the step"]


def test_dagsters_own_capture_starts_four_helper_processes_per_step(tmp_path: Path) -> None:
    """What the preload saves each step (a `tail` and a watching interpreter per stream)."""
    worker = _step_in_a_worker(tmp_path, "plain")
    helpers = next(line for line in worker.stdout.splitlines() if line.startswith("helpers:"))
    assert helpers.count("tail") == 2 and helpers.count("python") == 2, helpers
