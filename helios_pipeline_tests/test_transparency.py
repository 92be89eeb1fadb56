"""Transparency: with an alpha pixel format, a transparent page background stays transparent."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from helios_pipeline.engine.tools import ffmpeg_path
from helios_pipeline.orchestrator import RenderOrchestrator
from helios_pipeline.spec import SpecError
from helios_pipeline_tests.conftest import COMPOSITIONS

pytestmark = pytest.mark.slow

SIZE = 128
FORMATS = {
    "webm": {"video_codec": "libvpx-vp9", "pixel_format": "yuva420p", "decoder": ["-c:v", "libvpx-vp9"]},
    "mov": {"video_codec": "prores_ks", "pixel_format": "yuva444p10le", "decoder": []},
}


def decode_rgba(video: Path, decoder: list[str]) -> np.ndarray:
    """Every frame as (frames, SIZE, SIZE, 4) RGBA; libvpx-vp9 is the decoder that reads VP9 alpha."""
    command = [ffmpeg_path(), "-v", "error", *decoder, "-i", str(video), "-pix_fmt", "rgba", "-f", "rawvideo", "-"]
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, SIZE, SIZE, 4)


@pytest.mark.parametrize("mode", ["dom", "canvas"])
@pytest.mark.parametrize("container", ["webm", "mov"])
def test_transparent_background_decodes_as_alpha(container: str, mode: str, tmp_path: Path) -> None:
    settings = FORMATS[container]
    output = tmp_path / f"out.{container}"
    result = RenderOrchestrator.render(
        str(COMPOSITIONS / "transparent"), output, width=SIZE, height=SIZE, fps=30, frame_count=12, concurrency=2,
        mode=mode, video_codec=settings["video_codec"], pixel_format=settings["pixel_format"],
        canvas_selector="#stage", input_props={"canvas": mode == "canvas"},
    )  # fmt: skip
    assert result.plan.spec.intermediate_image_format == "png"
    frames = decode_rgba(output, settings["decoder"])
    assert frames.shape[0] == 12
    for frame in frames:
        red = frame[SIZE // 4, SIZE // 4]
        empty = frame[SIZE // 4, 3 * SIZE // 4]  # top-right quarter: nothing drawn
        blue = frame[7 * SIZE // 8, 7 * SIZE // 8]
        assert red[3] > 245 and red[0] > 200 and red[1] < 40 and red[2] < 40, red
        assert empty[3] < 10, empty
        assert 100 < blue[3] < 155 and blue[2] > 150, blue


def test_alpha_with_a_codec_that_cannot_store_it_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="video_codec: libx264 cannot store the alpha"):
        RenderOrchestrator.plan(str(COMPOSITIONS / "transparent"), tmp_path / "out.mp4", width=64, height=64,
                                fps=30, frame_count=2, pixel_format="yuva420p")  # fmt: skip


def test_alpha_with_jpeg_capture_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="intermediate_image_format: jpeg has no alpha channel"):
        RenderOrchestrator.plan(str(COMPOSITIONS / "transparent"), tmp_path / "out.webm", width=64, height=64,
                                fps=30, frame_count=2, pixel_format="yuva420p", video_codec="libvpx-vp9",
                                intermediate_image_format="jpeg")  # fmt: skip
