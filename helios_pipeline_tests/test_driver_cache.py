"""A chunk's Playwright driver (Node) keeps its compiled JavaScript in the user's cache folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from helios_pipeline.engine.driver_cache import NODE_COMPILE_CACHE
from helios_pipeline.orchestrator import InProcessExecutor, RenderOrchestrator
from helios_pipeline_tests.conftest import COMPOSITIONS

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
