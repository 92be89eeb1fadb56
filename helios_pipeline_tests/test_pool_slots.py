"""A chunk run killed with SIGKILL must give its `helios_chunks` slot back (issue 9).

A killed run process cannot release its pool slot itself; without help the slot stays claimed
for good, every later render on the instance renders one chunk at a time, and a second such kill
leaves no slot at all. The repo's dagster.yaml turns on run monitoring with
`free_slots_after_run_end_seconds`, which frees the slots of ended runs: proven here on one
machine with the real daemon.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest

from helios_pipeline.dagster_defs.names import CHUNK_POOL
from helios_pipeline.dagster_defs.runner import follow
from helios_pipeline_tests.framecode import frame_indices
from helios_pipeline_tests.helpers import (
    REPO,
    Gate,
    browser_parents,
    chunk_runs,
    deployment_env,
    deployment_processes,
    gated_composition,
    is_browser_main,
    open_instance,
    render_runs,
    running_daemon,
    wait_for,
    write_instance_config,
    write_spec,
)

pytestmark = pytest.mark.slow
SIZE = {"width": 320, "height": 180, "fps": 30}


def submit(env: dict[str, str], spec: Path) -> tuple[str, float]:
    since = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "helios_pipeline.cli", "submit", str(spec)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1], since


def rendering_run_process(home: Path) -> psutil.Process | None:
    """A chunk run's worker process (forked by the run launcher) whose Chromium is running.

    It is the process that started Chromium (or the wrapper script that runs it).
    """
    for process in browser_parents(deployment_processes(home)):
        with contextlib.suppress(psutil.Error):
            if any("chrom" in child.name().lower() for child in process.children(recursive=True)):
                return process
    return None


def pool_waits(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The run's "Step blocked by limit for pool ..." engine events: its step waited in the run for a slot."""
    return [
        record.message
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
        if "blocked by limit for pool" in (record.message or "")
    ]


def test_a_killed_chunk_run_frees_its_slot_and_the_next_render_is_parallel_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    write_instance_config(home)
    (tmp_path / "inbox").mkdir()
    env = deployment_env(home, tmp_path / "storage", tmp_path / "inbox")
    for name in ("DAGSTER_HOME", "HELIOS_STORAGE", "HELIOS_INBOX", "HELIOS_MAX_CHUNKS"):
        monkeypatch.setenv(name, env[name])  # follow() reads the deployment's storage
    instance = open_instance(home)
    with running_daemon(env, tmp_path / "daemon.log"), Gate() as first_gate, Gate() as next_gate:
        page = gated_composition(tmp_path / "first", first_gate)  # held until its run worker is killed
        first = write_spec(
            tmp_path / "specs", "killed", page, **SIZE, frame_count=60, concurrency=2, **first_gate.spec_fields
        )
        key, since = submit(env, first)
        victim = wait_for(lambda: rendering_run_process(home), 120, "a chunk run rendering in Chromium", 0.2)
        victim.kill()  # SIGKILL: the run cannot release its slot itself
        first_gate.open()

        status = follow(instance, key, since, lambda _status: None, timeout=300)
        assert frame_indices(Path(status.output)) == list(range(60))
        retried = [runs for runs in chunk_runs(render_runs(instance, key)).values() if len(runs) > 1]
        assert retried, "the killed chunk run was retried (run_retries)"

        def slots_free() -> bool:
            return not instance.event_log_storage.get_concurrency_info(CHUNK_POOL).claimed_slots

        wait_for(slots_free, 60, "run monitoring to free the killed run's slot")

        page = gated_composition(tmp_path / "next", next_gate)  # neither chunk can end before both have started
        second = write_spec(
            tmp_path / "specs", "after", page, **SIZE, frame_count=60, concurrency=2, **next_gate.spec_fields
        )
        key, since = submit(env, second)

        def both_out_of_the_queue() -> list[str] | None:
            runs = [runs[-1].dagster_run for runs in chunk_runs(render_runs(instance, key)).values()]
            out = [
                run.run_id for run in runs if run.status in (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)
            ]
            return out if len(out) == 2 else None

        # A slot still held keeps one chunk run in the queue until the other's step has ended, which its gate
        # does not let happen; or it lets the run start and its step waits inside the run (Dagster logs that).
        runs = wait_for(both_out_of_the_queue, 60, "both chunk runs to leave the queue (a slot still held?)", 0.2)
        next_gate.open()
        status = follow(instance, key, since, lambda _status: None, timeout=300)
        assert frame_indices(Path(status.output)) == list(range(60))
        waits = {run_id: pool_waits(instance, run_id) for run_id in runs}
        assert not any(waits.values()), f"a chunk step waited for a slot: {waits}"
    instance.dispose()


def test_a_chunk_whose_browser_died_is_retried_in_its_run_with_a_browser_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's Chromium killed mid-chunk (the out-of-memory killer; a stuck browser's watchdog does the same) fails
    the step, which is retried in the same run with a browser of its own and renders every frame."""
    home = tmp_path / "home"
    write_instance_config(home)
    (tmp_path / "inbox").mkdir()
    env = deployment_env(home, tmp_path / "storage", tmp_path / "inbox")
    for name in ("DAGSTER_HOME", "HELIOS_STORAGE", "HELIOS_INBOX", "HELIOS_MAX_CHUNKS"):
        monkeypatch.setenv(name, env[name])
    instance = open_instance(home)

    def rendering_browser() -> psutil.Process | None:
        for process in deployment_processes(home):
            with contextlib.suppress(psutil.Error):
                if is_browser_main(process):
                    return process
        return None

    with running_daemon(env, tmp_path / "daemon.log"), Gate() as held:
        page = gated_composition(tmp_path / "held", held)  # held until its browser is killed
        spec = write_spec(
            tmp_path / "specs", "browser-died", page, **SIZE, frame_count=30, concurrency=1, **held.spec_fields
        )
        key, since = submit(env, spec)
        # mid-chunk: its page is loaded and waits at the gate (a browser that dies before the step takes it, the
        # one its run worker launched ahead, is replaced without a failure)
        assert held.reached.wait(120), "no chunk reached its first frame"
        wait_for(rendering_browser, 10, "a chunk's Chromium", 0.2).kill()
        held.open()
        status = follow(instance, key, since, lambda _status: None, timeout=300)
        assert frame_indices(Path(status.output)) == list(range(30))
        (runs,) = chunk_runs(render_runs(instance, key)).values()
        assert len(runs) == 1, "a step retry in the same run was expected, not a run retry"
        retried = instance.all_logs(runs[0].dagster_run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
        assert retried, "the chunk step was not retried after its browser died"
    instance.dispose()
