"""Previews embedded in metadata: a real JPEG that fits its budget, of the right picture, or a clear error."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from helios_pipeline.dagster_defs.assets import CHUNK_PREVIEW_CHARS
from helios_pipeline.dagster_defs.previews import embedded_image, jpeg_budget
from helios_pipeline.engine import thumbnail
from helios_pipeline.engine.chunk import render_chunk
from helios_pipeline.engine.contact_sheet import contact_sheet_path, write_contact_sheet
from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.thumbnail import START_WIDTH, source_width
from helios_pipeline.engine.tools import ffmpeg_path
from helios_pipeline.plan import RenderChunk
from helios_pipeline.spec import validate_spec
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import decode_gray_frames
from helios_pipeline_tests.helpers import REPO

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


def count_preview_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The FFmpeg and ffprobe runs the previews make from now on, by name."""
    runs: list[str] = []
    for name in ("run_ffmpeg", "ffmpeg_stdout", "run_ffprobe"):
        real = getattr(thumbnail, name)
        counted = lambda *args, _real=real, _name=name, **kwargs: runs.append(_name) or _real(*args, **kwargs)  # noqa: E731
        monkeypatch.setattr(thumbnail, name, counted)
    return runs


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


def test_a_usual_budget_is_met_by_one_ffmpeg_run_that_leaves_no_folder(
    big_picture: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's preview is on the render's critical path: one FFmpeg run must find the widest JPEG under the
    budget (it took one run per width tried, up to three on a 720p chunk), and its scratch folder must go."""
    runs: list[list[str]] = []
    for name in ("run_ffmpeg", "ffmpeg_stdout", "run_ffprobe"):
        real = getattr(thumbnail, name)
        monkeypatch.setattr(
            thumbnail, name, lambda *args, _real=real, **kwargs: runs.append(args[0]) or _real(*args, **kwargs)
        )
    scratch_before = set(Path(tempfile.gettempdir()).glob("helios-preview-*"))
    for budget in (150_000, 40_000, 12_000):
        runs.clear()
        _, jpeg = decoded_jpeg(embedded_image(big_picture, budget).value, tmp_path)
        assert len(runs) == 1, f"budget {budget}: {len(runs)} FFmpeg/ffprobe runs"
        widths = [int(width) for width in re.findall(r"min\(iw,(\d+)\)", " ".join(runs[0]))]
        jpeg_budget = (budget - len("![big.png](data:image/jpeg;base64,)")) * 3 // 4
        fitting = max(width for width in widths if len(thumbnail.jpeg_at_width(big_picture, width)) <= jpeg_budget)
        assert source_width(jpeg) == fitting, f"budget {budget}: not the widest rung that fits"
    assert set(Path(tempfile.gettempdir()).glob("helios-preview-*")) == scratch_before, "a scratch folder was left"


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


def sheet_cells(sheet: Path, columns: int, rows: int, thumb: int, gap: int = 4) -> list[float]:
    """The mean gray of each cell's centre, row by row (the sheet's layout: margin and padding ``gap``)."""
    width, height = 2 * gap + columns * thumb + (columns - 1) * gap, 2 * gap + rows * thumb + (rows - 1) * gap
    raw = subprocess.run(
        [ffmpeg_path(), "-v", "error", "-i", str(sheet), "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    picture = np.frombuffer(raw, dtype=np.uint8).reshape(height, width)
    cells = []
    for row in range(rows):
        for column in range(columns):
            top, left = gap + row * (thumb + gap), gap + column * (thumb + gap)
            cells.append(float(picture[top + 8 : top + thumb - 8, left + 8 : left + thumb - 8].mean()))
    return cells


@pytest.mark.parametrize("frames_given", [None, 60])
def test_the_contact_sheet_shows_evenly_spaced_frames_of_the_count_it_is_given(
    tmp_path: Path, frames_given: int | None
) -> None:
    """Frame n of the video is gray 2n: each cell must be the frame its place asks for. A count given by the
    caller (the plan's) is used as is, without probing: half the real count spaces the cells half as far."""
    video = tmp_path / "ramp.mp4"
    ffmpeg("-f", "lavfi", "-i", "nullsrc=s=64x64:r=30:d=4,format=gray,geq=lum=N*2", "-frames:v", "120",
           "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", str(video))  # fmt: skip
    sheet = write_contact_sheet(video, frames=frames_given, columns=4, rows=3, thumb_width=32).path
    assert sheet == tmp_path / "ramp.contact.png"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ramp.contact.png", "ramp.mp4"], "no partial file"
    step = (frames_given or 120) // 12
    source = decode_gray_frames(video, 64)[:, 16:48, 16:48].mean(axis=(1, 2))
    expected = [float(source[cell * step]) for cell in range(12)]
    cells = sheet_cells(sheet, columns=4, rows=3, thumb=32)
    assert np.allclose(cells, expected, atol=4), list(zip(cells, expected, strict=True))


@pytest.mark.parametrize("budget", [150_000, 3_000])
def test_the_sheets_own_run_makes_its_preview_so_none_decodes_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    """The final video's preview is its contact sheet's: the sheet's FFmpeg run also writes the preview's JPEGs
    (a second run decoding the PNG took ~0.13 s at the end of every render). The preview picked from them is the
    picture of the sheet, at the widest rung that fits, and no FFmpeg runs for it; a budget below every rung
    goes on from the narrowest, as ``embedded_image`` alone would."""
    video = tmp_path / "busy.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=640x360:r=30:d=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video))
    sheet = write_contact_sheet(video, preview_bytes=jpeg_budget(contact_sheet_path(video), budget))
    widths = thumbnail.preview_widths(jpeg_budget(sheet.path, budget))
    assert len(sheet.previews) == len(widths)
    sheet_width = source_width(sheet.path)
    for jpeg, width in zip(sheet.previews, widths, strict=True):
        (tmp_path / "rung.jpg").write_bytes(jpeg)
        assert source_width(tmp_path / "rung.jpg") == min(width, sheet_width - sheet_width % 2)
    runs = count_preview_runs(monkeypatch)
    markdown = embedded_image(sheet.path, budget, sheet.previews).value
    assert len(markdown) <= budget
    fits = [jpeg for jpeg in sheet.previews if len(jpeg) <= jpeg_budget(sheet.path, budget)]
    if fits:
        assert runs == [], "the ladder was made again"
        assert decoded_jpeg(markdown, tmp_path)[1].read_bytes() == fits[0], "not the widest rung that fits"
    else:
        assert runs, "a budget below every rung goes on with attempts of its own"
    _, jpeg = decoded_jpeg(markdown, tmp_path)
    shown = decode_gray_frames(jpeg, 16)[0].astype(float)
    made_again = decode_gray_frames(decoded_jpeg(embedded_image(sheet.path, budget).value, tmp_path)[1], 16)[0]
    assert np.abs(shown - made_again).mean() < 12, "the preview is not a picture of the sheet"


CUE = "1\n00:00:00,500 --> 00:00:01,200\nOn the first frame\n"
"""A cue from frame 15 to 35 at 30 fps: on the first frame of a chunk that starts at frame 20."""


@pytest.mark.slow
def test_a_chunks_encoding_run_writes_its_first_frames_preview_and_the_same_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's preview is its first frame (subtitles burned in), written by the FFmpeg run that encodes the chunk
    (a second run decoding the chunk took ~0.15 s at the end of every chunk run); the chunk's video comes out
    byte for byte as without it, no preview folder is left, and the chunk asset's preview is picked from them
    with no FFmpeg run: the screenshots' ICC profile, which would fill most of its budget, is left out."""
    srt = tmp_path / "cue.srt"
    srt.write_text(CUE, encoding="utf-8")
    spec = validate_spec(
        {"composition": str(COMPOSITIONS / "black"), "width": 256, "height": 256, "fps": 30, "frame_count": 40,
         "subtitles": str(srt)},
        base_dir=tmp_path,
        source="test",
    )  # fmt: skip
    budget = jpeg_budget(Path("chunk_0001.mov"), CHUNK_PREVIEW_CHARS)
    before = set(Path(tempfile.gettempdir()).glob("helios-preview-*"))

    def chunk(folder: str) -> RenderChunk:
        return RenderChunk(id=1, start_frame=20, frame_count=8, output_file=tmp_path / folder / "chunk_0001.mov")

    with_preview = render_chunk(spec, chunk("a"), preview_bytes=budget)
    without = render_chunk(spec, chunk("b"))
    assert set(Path(tempfile.gettempdir()).glob("helios-preview-*")) == before
    assert without.first_frame_previews == ()
    video = Path(with_preview.output_file)
    assert video.read_bytes() == Path(without.output_file).read_bytes(), "the preview changed the chunk's bits"
    assert sorted(p.name for p in video.parent.iterdir()) == ["chunk_0001.mov"]
    widths = thumbnail.preview_widths(budget)
    assert len(with_preview.first_frame_previews) == len(widths)
    assert (decode_gray_frames(video, 128)[0, 80:] > 128).sum() > 20, "the cue is not on the chunk's first frame"
    band = decode_gray_frames(video, 32)[0, 20:].astype(float)  # the bottom band, where the cue is burned in
    for index, (jpeg, width) in enumerate(zip(with_preview.first_frame_previews, widths, strict=True)):
        rung = tmp_path / f"rung{index}.jpg"
        rung.write_bytes(jpeg)
        assert source_width(rung) == min(width, 256)
        difference = np.abs(decode_gray_frames(rung, 32)[0, 20:] - band).mean()
        assert difference < band.mean() / 2, "not the first frame"  # one without the cue: the band's whole mean
    assert "previews" not in json.dumps(with_preview.to_dict())  # the worker's JSON result: facts only
    assert not any(b"ICC_PROFILE" in jpeg for jpeg in with_preview.first_frame_previews)
    runs = count_preview_runs(monkeypatch)
    markdown = embedded_image(video, CHUNK_PREVIEW_CHARS, with_preview.first_frame_previews).value
    assert runs == [] and len(markdown) <= CHUNK_PREVIEW_CHARS, runs


LADDER_HELD = """
import time
from helios_pipeline.engine.thumbnail import ladder_outputs
with ladder_outputs(["[w0]"]) as (_, files):
    print(files[0].parent, flush=True)
    time.sleep(120)
"""


def test_the_ladder_folder_of_a_chunk_killed_outright_is_swept_by_the_next_one() -> None:
    """A chunk's ladder folder lives as long as the chunk (the encoding run writes the JPEGs at its end): a worker
    killed outright (SIGKILL, the out-of-memory killer) cannot remove it, so the next ladder on the host does."""
    held = subprocess.Popen([sys.executable, "-c", LADDER_HELD], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        folder = Path(held.stdout.readline().strip())
        assert folder.is_dir() and folder.name.startswith(f"helios-preview-{held.pid}@")
    finally:
        held.kill()
        held.wait(10)
    assert folder.is_dir(), "a process killed outright removes nothing"
    with thumbnail.ladder_outputs(["[w0]"]) as (_, files):
        assert files[0].parent.is_dir()
        assert not folder.exists(), "the killed process's folder was left"
    assert not files[0].parent.exists()


def test_a_ladder_folder_left_under_this_process_name_is_written_over_and_removed(tmp_path: Path) -> None:
    """A chunk's ladder folder is named by the writer's pid and host (its partial name): one left by a writer killed
    outright whose pid this process now has must not fail the chunk."""
    folder = tmp_path / ".chunk_000.partial-tag.previews"
    folder.mkdir()
    (folder / "0.jpg").write_bytes(b"left over")
    with thumbnail.ladder_outputs(["[w0]"], folder) as (options, files):
        assert files == [folder / "0.jpg"] and str(files[0]) in options
    assert not folder.exists()
