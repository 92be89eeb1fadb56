"""Chunk start-up: Playwright's driver (Node) keeps its compiled JavaScript in the user's cache
folder, and a chunk can use a Playwright its worker started while importing the engine."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
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
    """This process's live Playwright drivers (Node processes running ``run-driver``; a zombie is not one)."""
    drivers = set()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):  # ended meanwhile, or a zombie waiting to be reaped
            if "run-driver" in " ".join(child.cmdline()):
                drivers.add(child.pid)
    return drivers


def test_a_chunk_run_worker_hands_its_chunk_a_driver_started_beside_its_imports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The warm launcher's chunk worker starts the driver before Dagster runs the step; only the step's
    thread gets it (Playwright's sync API is bound to its thread), and it is stopped when the run ends."""
    from helios_pipeline.dagster_defs import run_worker

    seen: dict[str, object] = {}

    def execute_run(serialized_args: str) -> None:  # where Dagster runs the chunk step, on this thread
        with ThreadPoolExecutor(max_workers=1) as pool:
            seen["on another thread"] = pool.submit(run_worker.prestarted_playwright).result()
        seen["driver"] = run_worker.prestarted_playwright()
        seen["drivers"] = _drivers()
        seen["retry's driver"] = run_worker.prestarted_playwright()  # the step's retry: a driver of its own
        seen["drivers at the retry"] = _drivers()

    before = _drivers()
    monkeypatch.setattr(run_worker.private_api, "execute_run", execute_run)
    run_worker.execute("run args", start_driver=True)
    assert seen["driver"] is not None and seen["on another thread"] is None
    assert len(seen["drivers"] - before) == 1, "the worker's driver was not running while the step ran"
    # a retry may follow the driver's death (a stuck browser's watchdog kills it): it must not be handed the same
    assert seen["retry's driver"] is None
    assert seen["drivers at the retry"] == before, "the first attempt's driver was left running beside the retry"
    assert _drivers() == before, "the worker's driver outlived its run"
    assert run_worker.prestarted_playwright() is None

    run_worker.execute("run args", start_driver=False)  # the final run: no browser, so no driver
    assert seen["driver"] is None and seen["drivers"] == before
