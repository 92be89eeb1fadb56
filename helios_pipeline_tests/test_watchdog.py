"""The stability watchdog ends only its own chunk's browser (chunks as threads of one process)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from helios_pipeline.engine import watchdog as watchdog_module
from helios_pipeline.engine.chunk import render_chunk
from helios_pipeline.engine.errors import PageError
from helios_pipeline.plan import RenderChunk
from helios_pipeline.spec import RenderSpec, validate_spec
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import frame_indices

pytestmark = pytest.mark.slow

# The renderer's main thread spins forever from frame 2 on: no evaluate ever returns, only a kill ends it.
HANGS_AT_FRAME_TWO = """<!doctype html><html><body style="background:#222"><script>
  function tick() {
    if (performance.now() >= 2 * 1000 / 30) { for (;;) {} }
    requestAnimationFrame(tick);
  }
  requestAnimationFrame(tick);
</script></body></html>"""


def _spec(composition: Path, tmp_path: Path, **keys: object) -> RenderSpec:
    data = {"composition": str(composition), "width": 256, "height": 256, "fps": 30, "frame_count": 6, **keys}
    return validate_spec(data, base_dir=tmp_path, source="test")


def test_a_stuck_chunk_does_not_kill_a_sibling_chunks_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchdog_module, "WATCHDOG_MARGIN_S", 1.0)  # fire 1.5 s after the hang, not 15.5 s
    page = tmp_path / "hangs" / "index.html"
    page.parent.mkdir()
    page.write_text(HANGS_AT_FRAME_TWO, encoding="utf-8")
    stuck_spec = _spec(page, tmp_path, stability_timeout=500)
    good_spec = _spec(COMPOSITIONS / "frame_css", tmp_path)
    stuck_chunk = RenderChunk(id=0, start_frame=0, frame_count=6, output_file=tmp_path / "stuck.mov")
    good_chunk = RenderChunk(id=1, start_frame=0, frame_count=6, output_file=tmp_path / "good.mov")

    stuck_done = threading.Event()
    outcome: dict[str, object] = {}

    def hold_until_the_stuck_chunk_failed(frames: int) -> None:
        # Keep the good chunk's browser open mid-render while the other chunk's watchdog fires.
        if frames == 3:
            assert stuck_done.wait(60), "the stuck chunk never failed"

    def run_stuck() -> None:
        try:
            render_chunk(stuck_spec, stuck_chunk)
        except BaseException as exc:
            outcome["stuck"] = exc
        finally:
            stuck_done.set()

    def run_good() -> None:
        try:
            outcome["good"] = render_chunk(good_spec, good_chunk, on_progress=hold_until_the_stuck_chunk_failed)
        except BaseException as exc:
            outcome["good"] = exc

    threads = [threading.Thread(target=run_stuck), threading.Thread(target=run_good)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)

    assert isinstance(outcome["stuck"], PageError), outcome["stuck"]
    assert "did not become ready" in str(outcome["stuck"]) and "frame 2" in str(outcome["stuck"])
    assert not stuck_chunk.output_file.exists()
    assert not isinstance(outcome["good"], BaseException), f"the sibling chunk failed: {outcome['good']}"
    assert frame_indices(good_chunk.output_file) == list(range(6))
