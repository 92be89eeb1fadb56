"""Frame exactness: decode every output frame and check it shows the frame it should.

The test compositions paint their own frame index into 16 black/white cells, so a dropped,
doubled or shifted frame at any chunk seam is caught.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helios_pipeline.engine.probe import probe
from helios_pipeline.orchestrator import RenderOrchestrator
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import decode_gray_frames, frame_indices

pytestmark = pytest.mark.slow

SIZE = {"width": 256, "height": 256}


def _render(composition: Path, output: Path, **options) -> Path:
    result = RenderOrchestrator.render(str(composition), output, **SIZE, **options)
    assert result.output == output and output.is_file()
    assert not result.plan.work_dir.exists(), "the work folder must be removed after success"
    return output


@pytest.mark.parametrize("concurrency", [1, 3])
@pytest.mark.parametrize("page", ["frame_css", "frame_raf"])
def test_every_frame_is_the_right_frame(page: str, concurrency: int, tmp_path: Path) -> None:
    output = _render(COMPOSITIONS / page, tmp_path / "out.mp4", fps=30, frame_count=45, concurrency=concurrency)
    assert frame_indices(output) == list(range(45))


@pytest.mark.parametrize("concurrency", [1, 3])
def test_helios_core_page_is_frame_exact(helios_core_composition: Path, concurrency: int, tmp_path: Path) -> None:
    output = _render(helios_core_composition, tmp_path / "out.mp4", fps=30, frame_count=45, concurrency=concurrency)
    assert frame_indices(output) == list(range(45))


@pytest.mark.parametrize("fps", [24, 29.97, 60])
def test_frame_exact_at_other_frame_rates(fps: float, tmp_path: Path) -> None:
    output = _render(
        COMPOSITIONS / "frame_raf",
        tmp_path / "out.mp4",
        fps=fps,
        frame_count=40,
        concurrency=3,
        input_props={"fps": fps},
    )
    assert frame_indices(output) == list(range(40))
    info = probe(output)
    assert info.video_frames == 40
    assert abs(float(info.frame_rate) - fps) < 1e-3


def test_start_frame_renders_the_global_range(tmp_path: Path) -> None:
    output = _render(
        COMPOSITIONS / "frame_css", tmp_path / "out.mp4", fps=30, start_frame=1000, frame_count=36, concurrency=3
    )
    assert frame_indices(output) == list(range(1000, 1036))


def test_chunked_output_equals_single_chunk_output(tmp_path: Path) -> None:
    """The example composition (gradients, blur, text, CSS, WAAPI, rAF) chunked vs whole."""
    composition = Path(__file__).parents[1] / "examples" / "promo" / "index.html"
    common = {"fps": 30, "frame_count": 40, "crf": 10, "input_props": {"title": "seams", "duration": 2}}
    single = _render(composition, tmp_path / "single.mp4", concurrency=1, **common)
    chunked = _render(composition, tmp_path / "chunked.mp4", concurrency=4, **common)
    a = decode_gray_frames(single, side=256).astype(np.int16)
    b = decode_gray_frames(chunked, side=256).astype(np.int16)
    assert a.shape == b.shape == (40, 256, 256)
    same = np.abs(a - b).mean(axis=(1, 2))
    assert same.max() < 1.0, f"chunked differs from single beyond codec noise: {same}"
    # and each chunked frame is closer to its own single-chunk frame than to either neighbour,
    # so a frame shifted or doubled at a seam cannot hide in the noise
    for k in range(40):
        for neighbour in (k - 1, k + 1):
            if 0 <= neighbour < 40:
                assert same[k] < np.abs(a[neighbour] - b[k]).mean(), f"frame {k} looks like frame {neighbour}"


@pytest.mark.parametrize("concurrency", [1, 3])
def test_video_elements_show_the_frame_of_the_composition_time(concurrency: int, tmp_path: Path) -> None:
    """A <video> (1 s red, 1 s green, 1 s blue) is seeked per frame, served with HTTP ranges; a source-less
    <audio> and a preload="none" <video> beside it neither hang the render nor change the picture."""
    import subprocess

    from helios_pipeline.engine.tools import ffmpeg_path

    output = tmp_path / "out.mp4"
    RenderOrchestrator.render(
        str(COMPOSITIONS / "video_element"), output, width=64, height=64, fps=30, frame_count=90,
        concurrency=concurrency, stability_timeout=10000,
    )  # fmt: skip
    command = [ffmpeg_path(), "-v", "error", "-i", str(output), "-pix_fmt", "rgb24", "-f", "rawvideo", "-"]
    pixels = np.frombuffer(subprocess.run(command, capture_output=True, check=True).stdout, np.uint8)
    centre = pixels.reshape(-1, 64, 64, 3)[:, 32, 32]
    colours = "".join("rgb"[int(np.argmax(pixel))] for pixel in centre)
    assert colours == "r" * 30 + "g" * 30 + "b" * 30


@pytest.mark.parametrize(("preset", "lookahead"), [("medium", 10), ("slow", 50)])
def test_x264_look_ahead_is_short_at_the_fast_presets_and_kept_at_the_slow_ones(
    preset: str, lookahead: int, tmp_path: Path
) -> None:
    """x264 records its settings in the stream (an SEI): read back what the encoder really used.

    A chunk is one GOP and x264 caps the look-ahead at the GOP length: 60 frames leave room for 50.
    """
    output = _render(COMPOSITIONS / "frame_raf", tmp_path / "out.mp4", fps=30, frame_count=60, preset=preset)
    settings = output.read_bytes()
    assert f"rc_lookahead={lookahead} ".encode() in settings
    assert frame_indices(output) == list(range(60))
