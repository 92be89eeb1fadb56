"""A chunk run's worker launches the chunk's Chromium while it imports the code location; the chunk step takes it
once, on the thread that launched it, when its switches suit the chunk, and whatever is not taken is closed."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from helios_pipeline.engine.browser import Browser, start_browser
from helios_pipeline.engine.chunk import render_chunk
from helios_pipeline.orchestrator import RenderOrchestrator
from helios_pipeline.processes import alive
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import frame_indices
from helios_pipeline_tests.helpers import describe, is_browser

pytestmark = pytest.mark.slow


def _browsers() -> list[psutil.Process]:
    """This process's live Chromium processes (and wrapper scripts running one); an earlier test's zombie child
    waiting to be reaped has no command line to read, and is none."""
    found = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if is_browser(process):
                found.append(process)
    return alive(found)


def test_a_chunk_run_worker_hands_its_step_the_browser_it_launched_beside_its_imports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from helios_pipeline.dagster_defs import run_worker

    seen: dict[str, object] = {}

    def execute_run(serialized_args: str) -> None:  # where Dagster runs the chunk step, on this thread
        seen["running before the step"] = [p.pid for p in _browsers()]
        with ThreadPoolExecutor(max_workers=1) as pool:
            seen["on another thread"] = pool.submit(run_worker.prestarted_browser, True).result()
        browser = run_worker.prestarted_browser(True)
        seen["browser"] = browser
        seen["retry's browser"] = run_worker.prestarted_browser(True)  # a step retry launches its own
        if browser is not None:
            seen["folder"] = browser.folder
            browser.close()  # the chunk closes the browser it was handed

    monkeypatch.setattr(run_worker.private_api, "execute_run", execute_run)
    run_worker.execute("run args", start_browser=True)
    browser = seen["browser"]
    assert isinstance(browser, Browser) and browser.begin_frame_control
    assert browser.pid in seen["running before the step"], "the browser was not launched before the step ran"
    assert seen["on another thread"] is None and seen["retry's browser"] is None
    assert not _browsers(), describe(_browsers())
    assert not Path(seen["folder"]).exists()


def test_a_browser_the_step_does_not_take_or_cannot_use_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Untaken (the step failed before, or asked for none), launched with the wrong switches (a canvas render, which
    needs a browser that draws on its own) or dead before the step asks: nothing of it is left."""
    from helios_pipeline.dagster_defs import run_worker

    folders: list[Path] = []

    def step_takes_nothing(serialized_args: str) -> None:
        assert run_worker._prestarted is not None
        folders.append(run_worker._prestarted[1].folder)

    def step_wants_another(serialized_args: str) -> None:
        assert run_worker._prestarted is not None
        folders.append(run_worker._prestarted[1].folder)
        assert run_worker.prestarted_browser(False) is None
        assert not _browsers(), describe(_browsers())

    def step_after_its_death(serialized_args: str) -> None:  # killed while the worker imported (out of memory)
        assert run_worker._prestarted is not None
        dead = run_worker._prestarted[1]
        folders.append(dead.folder)
        dead.kill()
        dead.connection.closed.wait(10)
        assert run_worker.prestarted_browser(True) is None  # the chunk launches its own, no failure

    for step in (step_takes_nothing, step_wants_another, step_after_its_death):
        monkeypatch.setattr(run_worker.private_api, "execute_run", step)
        run_worker.execute("run args", start_browser=True)
        assert not _browsers(), describe(_browsers())
    assert len(folders) == 3 and not any(folder.exists() for folder in folders)
    seen: list[object] = []
    monkeypatch.setattr(run_worker.private_api, "execute_run", lambda _args: seen.append(_browsers()))
    run_worker.execute("run args")  # a run of no chunk launches nothing
    assert seen == [[]]


def test_a_chunk_renders_with_a_browser_launched_ahead_and_closes_it(tmp_path: Path) -> None:
    plan = RenderOrchestrator.plan(
        str(COMPOSITIONS / "frame_css"), tmp_path / "out.mp4", width=64, height=64, fps=30, frame_count=6,
        concurrency=1,
    )  # fmt: skip
    plan.work_dir.mkdir(parents=True)
    browser = start_browser(begin_frame_control=True)
    (chunk,) = plan.chunks
    result = render_chunk(plan.spec, chunk, browser=browser)
    assert frame_indices(chunk.output_file) == list(range(6))
    assert result.capture_method.startswith("dom/beginframe")
    assert browser.process.poll() is not None and not browser.folder.exists()
    assert not _browsers(), describe(_browsers())
