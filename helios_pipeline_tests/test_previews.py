"""Previews embedded in metadata: a real JPEG that fits its budget, of the right picture, or a clear error."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import pytest

from helios_pipeline.dagster_defs.previews import embedded_image
from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.thumbnail import START_WIDTH, source_width
from helios_pipeline.engine.tools import ffmpeg_path
from helios_pipeline_tests.framecode import decode_gray_frames

DATA_URI = re.compile(r"^!\[(?P<alt>[^\]]+)\]\(data:image/jpeg;base64,(?P<data>[A-Za-z0-9+/=]+)\)$")


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_path(), "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def big_picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busy 1920x1080 PNG: far more than a preview may weigh."""
    path = tmp_path_factory.mktemp("pictures") / "big.png"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=1920x1080", "-frames:v", "1", str(path))
    return path


def decoded_jpeg(markdown: str, folder: Path) -> tuple[str, Path]:
    """The alt text and the JPEG file of an embedded image's Markdown."""
    match = DATA_URI.match(markdown)
    assert match, markdown[:120]
    jpeg = folder / "preview.jpg"
    jpeg.write_bytes(base64.b64decode(match["data"]))
    return match["alt"], jpeg


@pytest.mark.parametrize("budget", [150_000, 20_000, 999])
def test_a_big_picture_is_scaled_down_until_its_markdown_fits_the_budget(
    big_picture: Path, tmp_path: Path, budget: int
) -> None:
    markdown = embedded_image(big_picture, budget).value
    assert len(markdown) <= budget
    alt, jpeg = decoded_jpeg(markdown, tmp_path)
    assert alt == "big.png"
    width = source_width(jpeg)  # a JPEG FFmpeg can read back
    assert 16 <= width <= START_WIDTH
    if budget == 150_000:
        assert width == START_WIDTH, "a roomy budget keeps the widest preview"


def test_a_small_picture_is_never_scaled_up(tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=100x60", "-frames:v", "1", str(small))
    _, jpeg = decoded_jpeg(embedded_image(small).value, tmp_path)
    assert source_width(jpeg) == 100


def test_a_video_is_previewed_by_its_first_frame(tmp_path: Path) -> None:
    video = tmp_path / "chunk.mov"  # frame 0 white, every later frame black
    ffmpeg("-f", "lavfi", "-i", "color=black:s=64x64:r=30:d=1", "-vf", "drawbox=c=white:t=fill:enable='eq(n,0)'",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video))  # fmt: skip
    assert decode_gray_frames(video, 8)[1:].mean() < 20
    _, jpeg = decoded_jpeg(embedded_image(video, 999).value, tmp_path)
    assert decode_gray_frames(jpeg, 8).mean() > 235


def test_a_missing_unreadable_or_unfittable_file_is_a_clear_error(big_picture: Path, tmp_path: Path) -> None:
    missing = tmp_path / "gone.png"
    with pytest.raises(RenderError, match=f"preview of {re.escape(str(missing))}: no such file"):
        embedded_image(missing)
    text = tmp_path / "notes.png"
    text.write_text("not a picture", encoding="utf-8")
    with pytest.raises(RenderError, match=f"preview of {re.escape(str(text))}"):
        embedded_image(text)
    with pytest.raises(RenderError, match="no JPEG of it fits in"):
        embedded_image(big_picture, 200)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.png"], "a preview writes no file"
