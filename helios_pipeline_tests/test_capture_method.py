"""DOM capture: BeginFrame where the browser has it, screenshots where not, chosen by a probe and recorded.

Every case renders the frame-index page through ``render_chunk`` and decodes the chunk: whichever
capture draws the frames, each shows the frame it should.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helios_pipeline.engine import browser as browser_module
from helios_pipeline.engine import tools
from helios_pipeline.engine.capture_setting import DOM_CAPTURE_ENV
from helios_pipeline.engine.chunk import ChunkResult, render_chunk
from helios_pipeline.engine.still import render_still
from helios_pipeline.plan import RenderChunk
from helios_pipeline.spec import validate_spec
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import frame_indices
from helios_pipeline_tests.helpers import expected_dom_capture

pytestmark = pytest.mark.slow

NEW_HEADLESS = "/usr/bin/chromium"  # Debian's full Chromium: Playwright runs it in new headless mode
FRAMES = 8
START = 20


def _render(tmp_path: Path) -> ChunkResult:
    spec = validate_spec(
        {"composition": str(COMPOSITIONS / "frame_css"), "width": 128, "height": 128, "fps": 30, "frame_count": 40},
        base_dir=tmp_path,
        source="test",
    )
    chunk = RenderChunk(id=0, start_frame=START, frame_count=FRAMES, output_file=tmp_path / "chunk.mov")
    result = render_chunk(spec, chunk)
    assert frame_indices(Path(result.output_file)) == list(range(START, START + FRAMES))
    return result


@pytest.fixture
def chromium(monkeypatch: pytest.MonkeyPatch):
    """Set the Chromium binary for one test (``chromium_path`` is cached per process)."""

    def use(path: str) -> None:
        monkeypatch.setenv("HELIOS_CHROMIUM", path)
        tools.chromium_path.cache_clear()

    yield use
    tools.chromium_path.cache_clear()


def test_headless_shell_captures_by_begin_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if expected_dom_capture() != "beginframe":
        pytest.skip(f"{tools.chromium_path()} is not chromium-headless-shell")
    monkeypatch.delenv(DOM_CAPTURE_ENV, raising=False)
    assert _render(tmp_path).capture_method == "dom/beginframe/jpeg"
    # a still of the same frame is drawn by the same capture
    spec = validate_spec(
        {"composition": str(COMPOSITIONS / "frame_css"), "width": 128, "height": 128, "fps": 30, "frame_count": 40},
        base_dir=tmp_path,
        source="test",
    )
    assert render_still(spec, START, tmp_path / "still.png").capture_method == "dom/beginframe/png"


@pytest.mark.skipif(not os.access(NEW_HEADLESS, os.X_OK), reason=f"no {NEW_HEADLESS} (new headless Chromium)")
def test_new_headless_chromium_falls_back_to_screenshots(tmp_path: Path, chromium) -> None:
    """The full Chromium answers BeginFrame with "wasn't found": the probe keeps the screenshot path."""
    chromium(NEW_HEADLESS)
    assert _render(tmp_path).capture_method == "dom/screenshot/jpeg"


def test_a_browser_refusing_begin_frame_falls_back_to_screenshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """headless-shell launched without begin-frame control refuses the probe at the CDP level
    ("only supported with --run-all-compositor-stages-before-draw"): screenshots, still exact."""
    monkeypatch.setattr(browser_module, "BEGIN_FRAME_ARGS", ())
    assert _render(tmp_path).capture_method == "dom/screenshot/jpeg"


def test_screenshots_can_be_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DOM_CAPTURE_ENV, "screenshot")
    assert _render(tmp_path).capture_method == "dom/screenshot/jpeg"


def test_an_unknown_capture_setting_is_refused_before_anything_renders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, each chunk failed on it after its worker and browser had started (exit 1, "chunk 1: ...")."""
    from helios_pipeline.limits import SettingError
    from helios_pipeline.preflight import check_inputs

    spec = validate_spec(
        {"composition": str(COMPOSITIONS / "frame_css"), "width": 128, "height": 128, "fps": 30, "frame_count": 4},
        base_dir=tmp_path,
        source="test",
    )
    monkeypatch.setenv(DOM_CAPTURE_ENV, "beginframe-please")
    with pytest.raises(SettingError, match=rf"{DOM_CAPTURE_ENV}='beginframe-please': expected 'auto' or 'screenshot'"):
        check_inputs(spec, fetch_composition=False)
