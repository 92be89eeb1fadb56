"""Canvas mode: the <canvas> is encoded in the page with WebCodecs (or captured as images), and
every frame is still the right frame at every chunk seam."""

from __future__ import annotations

from pathlib import Path

import pytest

from helios_pipeline.engine.errors import PageError, RenderError
from helios_pipeline.engine.probe import probe
from helios_pipeline.orchestrator import RenderOrchestrator
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import frame_indices

pytestmark = pytest.mark.slow

CANVAS = COMPOSITIONS / "frame_canvas"
BASE = {"width": 256, "height": 256, "fps": 30, "mode": "canvas", "canvas_selector": "#stage"}


def _render(output: Path, **options):
    return RenderOrchestrator.render(str(CANVAS), output, **{**BASE, **options})


@pytest.mark.parametrize("concurrency", [1, 3])
def test_webcodecs_canvas_render_is_frame_exact(concurrency: int, tmp_path: Path) -> None:
    result = _render(tmp_path / "out.mp4", frame_count=45, concurrency=concurrency)
    assert all(chunk.capture_method.startswith("canvas/webcodecs") for chunk in result.chunks)
    assert frame_indices(result.output) == list(range(45))
    info = probe(result.output)
    assert (info.video_codec, info.video_frames, float(info.frame_rate)) == ("h264", 45, 30.0)


@pytest.mark.parametrize("codec", ["vp9", "av1", "vp8"])
def test_each_intermediate_codec_is_frame_exact(codec: str, tmp_path: Path) -> None:
    result = _render(tmp_path / "out.mp4", frame_count=36, concurrency=3, intermediate_video_codec=codec)
    prefix = {"vp9": "vp09", "av1": "av01", "vp8": "vp8"}[codec]
    assert all(f"webcodecs {prefix}" in chunk.capture_method for chunk in result.chunks)
    assert frame_indices(result.output) == list(range(36))


def test_copy_keeps_the_in_page_stream_and_joins_exactly(tmp_path: Path) -> None:
    result = _render(tmp_path / "out.mp4", frame_count=45, concurrency=3, video_codec="copy", start_frame=30)
    assert frame_indices(result.output) == list(range(30, 75))
    assert probe(result.output).video_frames == 45


def test_webcodecs_disabled_falls_back_to_canvas_images(tmp_path: Path) -> None:
    result = _render(tmp_path / "out.mp4", frame_count=30, concurrency=2, web_codecs_preference="disabled")
    assert {chunk.capture_method for chunk in result.chunks} == {"canvas/jpeg"}
    assert frame_indices(result.output) == list(range(30))


def test_copy_without_webcodecs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="video_codec 'copy' needs an in-page WebCodecs encoder"):
        _render(tmp_path / "out.mp4", frame_count=10, concurrency=1, video_codec="copy",
                web_codecs_preference="disabled")  # fmt: skip
    assert not (tmp_path / "out.mp4").exists()


def test_missing_canvas_names_the_selector(tmp_path: Path) -> None:
    with pytest.raises(PageError, match=r'no <canvas> matches "#nope"'):
        _render(tmp_path / "out.mp4", frame_count=10, concurrency=1, canvas_selector="#nope")
    assert list(tmp_path.iterdir()) == []
