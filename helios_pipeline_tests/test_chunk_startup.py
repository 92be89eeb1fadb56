"""Chunk start-up: Playwright's driver (Node) keeps its compiled JavaScript in the user's cache
folder, and a chunk can use a Playwright its worker started while importing the engine."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import sync_playwright

from helios_pipeline.engine.chunk import render_chunk
from helios_pipeline.engine.driver_cache import NODE_COMPILE_CACHE
from helios_pipeline.orchestrator import InProcessExecutor, RenderOrchestrator
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import frame_indices

pytestmark = pytest.mark.slow


def test_the_playwright_driver_fills_the_node_compile_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NODE_COMPILE_CACHE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    RenderOrchestrator.render(
        str(COMPOSITIONS / "frame_canvas"), tmp_path / "out.mp4", width=64, height=64, fps=30, frame_count=2,
        concurrency=1, mode="canvas", canvas_selector="#stage", executor=InProcessExecutor(),
    )  # fmt: skip
    cache = tmp_path / "cache" / "helios_pipeline" / "node-compile-cache"
    assert [path for path in cache.rglob("*") if path.is_file()], f"nothing compiled into {cache}"


def test_chunks_render_with_a_playwright_started_by_the_caller(tmp_path: Path) -> None:
    """The worker starts Playwright itself (beside its imports); the chunk uses it and leaves it running."""
    plan = RenderOrchestrator.plan(
        str(COMPOSITIONS / "frame_canvas"), tmp_path / "out.mp4", width=64, height=64, fps=30, frame_count=6,
        concurrency=2, mode="canvas", canvas_selector="#stage",
    )  # fmt: skip
    plan.work_dir.mkdir(parents=True)
    with sync_playwright() as playwright:
        for chunk in plan.chunks:  # the second chunk proves the first left Playwright usable
            render_chunk(plan.spec, chunk, playwright=playwright)
    assert [frame_indices(chunk.output_file) for chunk in plan.chunks] == [[0, 1, 2], [3, 4, 5]]


def _drivers() -> set[int]:
    """This process's Playwright drivers (Node processes running ``run-driver``)."""
    return {
        child.pid for child in psutil.Process().children(recursive=True) if "run-driver" in " ".join(child.cmdline())
    }


def test_a_chunk_run_worker_starts_its_driver_beside_the_run_and_renders_on_the_drivers_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The warm launcher's chunk worker starts the driver while Dagster starts the run (not before: the driver
    here cannot finish starting until the run has begun); the step's render runs on the driver's thread with
    that driver (Playwright's sync API is bound to its thread), and the driver is stopped when the run ends."""
    from helios_pipeline.dagster_defs import run_worker
    from helios_pipeline.engine import browser

    run_started = threading.Event()
    real_launch = browser.launch_playwright

    def launch_once_the_run_started():  # type: ignore[no-untyped-def]
        assert run_started.wait(10), "the run waited for the driver"
        return real_launch()

    seen: dict[str, object] = {}

    def render(playwright: object, cancel: object) -> str:
        seen.update(thread=threading.get_ident(), driver=playwright, cancel=cancel, drivers=_drivers())
        return "rendered"

    def execute_run(serialized_args: str) -> None:  # where Dagster runs the chunk step, on this thread
        run_started.set()
        seen["result"] = run_worker.on_chunk_thread(render)

    before = _drivers()
    monkeypatch.setattr(browser, "launch_playwright", launch_once_the_run_started)
    monkeypatch.setattr(run_worker.private_api, "execute_run", execute_run)
    run_worker.execute("run args", start_driver=True)
    assert seen["result"] == "rendered"
    assert seen["driver"] is not None, "the render did not get the worker's driver"
    assert seen["thread"] != threading.get_ident() and isinstance(seen["cancel"], threading.Event)
    assert len(seen["drivers"] - before) == 1, "the worker's driver was not running while the step ran"  # type: ignore[operator]
    assert _drivers() == before, "the worker's driver outlived its run"

    seen.clear()
    run_worker.execute("run args", start_driver=False)  # the final run (or another launcher): no chunk thread
    assert seen["driver"] is None and seen["cancel"] is None and seen["thread"] == threading.get_ident()
    assert seen["drivers"] == before


def test_an_interrupted_chunk_step_cancels_its_render_and_waits_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dagster terminates a run by interrupting its main thread, where the step waits: the render on the chunk
    thread must be told (its chunk then kills its browser) and must end before the interrupt goes on."""
    from helios_pipeline.dagster_defs import run_worker

    seen: dict[str, object] = {}

    def render(playwright: object, cancel: threading.Event) -> str:
        seen["cancelled"] = cancel.wait(10)
        time.sleep(0.3)  # the chunk winding down: its browser killed, its partial file removed
        seen["render ended"] = time.monotonic()
        return "cancelled"

    def execute_run(serialized_args: str) -> None:
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            run_worker.on_chunk_thread(render)
        except KeyboardInterrupt:
            seen["interrupt reached the step"] = time.monotonic()
            raise

    monkeypatch.setattr(run_worker.private_api, "execute_run", execute_run)
    with pytest.raises(KeyboardInterrupt):
        run_worker.execute("run args", start_driver=True)
    assert seen["cancelled"] is True, "the render was not told"
    assert seen["render ended"] <= seen["interrupt reached the step"], "the step went on before its render ended"  # type: ignore[operator]
