"""Small JPEG previews: an image, or a video's first frame, scaled down until it fits a byte budget.

Previews travel inside Dagster's event log (as data URIs), so their size matters more than their
sharpness: the picture is never scaled up. One FFmpeg run writes it at a ladder of widths and the widest
that fits is kept; below the ladder, each attempt that is too big is scaled down by the square root of
the excess (a JPEG's size grows with its area), and a picture already small is quantised more coarsely
instead, as shrinking it further would lose more.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.ffmpeg import ffmpeg_command, ffmpeg_stdout, run_ffmpeg, run_ffprobe
from helios_pipeline.scratch import PREVIEW_TEMP_PREFIX, process_folder

START_WIDTH = 960
"""Widest preview tried first (it fits the UI's Markdown dialog); a narrower source keeps its own width."""
MIN_WIDTH = 16
SMALL_WIDTH = 160
"""Below this width a too-big picture is quantised more coarsely before it is shrunk again."""
JPEG_QUALITY = 5
"""FFmpeg's MJPEG ``-q:v`` (2 best … 31 worst): sharp enough for a preview, a fraction of the size."""
COARSEST_QUALITY = 24
ATTEMPTS = 10
WIDTH_PER_ROOT_BYTE = 8
"""First guess of a width for a budget: about ``8 × sqrt(bytes)`` pixels (a tiny budget starts small)."""
SHRINK_MARGIN = 0.9
"""Aim a little under the budget, so the second attempt nearly always fits."""
DROP_ICC = "sidedata=mode=delete:type=ICC_PROFILE"
"""A picture's ICC profile, which FFmpeg would copy into every JPEG: Chromium's screenshots carry one (~470 bytes,
two thirds of a chunk preview's budget), and a thumbnail is no colour reference."""
RUNG_STEP = 0.8
RUNGS = 8
"""``jpeg_ladder``'s widths: 960, 768, 614 ... 200 px (each JPEG about 0.64 times the bytes of the one before)."""


def source_width(source: Path) -> int:
    """The width of ``source``'s picture (an image or a video's first stream)."""
    data = run_ffprobe(
        source, "-select_streams", "v:0", "-show_entries", "stream=width", what=f"preview of {source}: not readable"
    )
    streams = data.get("streams") or []
    if not streams or not streams[0].get("width"):
        raise RenderError(f"preview of {source}: it has no picture")
    return int(streams[0]["width"])


def jpeg_at_width(source: Path, width: int, quality: int = JPEG_QUALITY) -> bytes:
    """The first picture of ``source`` as a JPEG ``width`` pixels wide (height keeps the aspect ratio)."""
    command = ffmpeg_command(
        "-i", str(source), "-frames:v", "1",
        "-vf", f"{DROP_ICC},scale={width}:-2:flags=area,format=yuvj420p",
        "-q:v", str(quality), "-f", "image2pipe", "-c:v", "mjpeg", "pipe:1",
    )  # fmt: skip
    return ffmpeg_stdout(command, f"preview of {source}")


def ladder_widths(first: int) -> list[int]:
    """The widths one FFmpeg run tries, widest first: ``first``, then ``RUNG_STEP`` times the last, down to
    ``MIN_WIDTH`` (each even; a picture narrower than a rung keeps its own width)."""
    widths = []
    width = float(first)
    while len(widths) < RUNGS and width >= MIN_WIDTH:
        widths.append(max(MIN_WIDTH, int(width) - int(width) % 2))
        width *= RUNG_STEP
    return widths


def preview_widths(max_bytes: int) -> list[int]:
    """The ladder's widths for a budget of ``max_bytes``: the first guess (about ``8 x sqrt(bytes)`` pixels, at
    most ``START_WIDTH``), then each ``RUNG_STEP`` times the last."""
    guess = max(SMALL_WIDTH, int(math.sqrt(max(max_bytes, 0)) * WIDTH_PER_ROOT_BYTE))
    return ladder_widths(min(START_WIDTH, guess))


def ladder_graph(source: str, widths: Sequence[int]) -> tuple[str, list[str]]:
    """A filter graph that scales the stream labelled ``source`` (``[0:v]``) to each of ``widths`` (never wider
    than the picture, as full-range YUV for MJPEG), and its output labels, widest first."""
    outputs = [f"[w{index}]" for index in range(len(widths))]
    scales = ";".join(
        f"[s{index}]scale=w='2*trunc(min(iw,{width})/2)':h=-2:flags=area,format=yuvj420p{outputs[index]}"
        for index, width in enumerate(widths)
    )
    branches = "".join(f"[s{index}]" for index in range(len(widths)))
    graph = f"{source}{DROP_ICC},split={len(widths)}{branches};{scales}"
    return graph, outputs


@contextlib.contextmanager
def ladder_outputs(outputs: Sequence[str], folder: Path | None = None) -> Iterator[tuple[list[str], list[Path]]]:
    """FFmpeg's output options writing each of ``outputs`` (labels of ``ladder_graph``) as one JPEG, and the
    files they go to, in ``folder`` (made here; by default one of this process in the temporary folder), removed
    after the block (none for no outputs)."""
    if not outputs:
        yield [], []
        return
    if folder is None:
        folder = process_folder(PREVIEW_TEMP_PREFIX)  # swept by the next one if this process is killed outright
    else:  # left by a chunk writer killed outright whose pid and host this process now has: written over (-y)
        folder.mkdir(exist_ok=True)
    try:
        files = [folder / f"{index}.jpg" for index in range(len(outputs))]
        mapped = []
        for output, file in zip(outputs, files, strict=True):
            mapped += ["-map", output, "-frames:v", "1", "-q:v", str(JPEG_QUALITY), "-c:v", "mjpeg", str(file)]
        yield mapped, files
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def jpeg_ladder(source: Path, widths: list[int]) -> list[bytes]:
    """The first picture of ``source`` as a JPEG at each of ``widths`` (never wider than the picture), from
    one FFmpeg run that decodes it once."""
    graph, outputs = ladder_graph("[0:v]", widths)
    with ladder_outputs(outputs) as (mapped, files):
        run_ffmpeg(ffmpeg_command("-i", str(source), "-filter_complex", graph, *mapped), f"preview of {source}")
        return [file.read_bytes() for file in files]


def jpeg_within(source: Path, max_bytes: int, ladder: Sequence[bytes] = ()) -> bytes:
    """A JPEG of ``source`` (an image, or a video's first frame) of at most ``max_bytes`` bytes.

    The usual budget is met by the first FFmpeg run (``jpeg_ladder``: ~0.07 s, where trying one width at a
    time took up to three runs on a chunk's critical path); a budget below every rung goes on from the
    narrowest one, one run per attempt. ``ladder``: that first run's JPEGs, made already (at
    ``preview_widths(max_bytes)``, by the FFmpeg run that wrote ``source``: a contact sheet's). Raises
    ``RenderError`` naming the file when it is missing, has no picture, or cannot fit.
    """
    if not source.is_file():
        raise RenderError(f"preview of {source}: no such file")
    widths = preview_widths(max_bytes)
    ladder = list(ladder) or jpeg_ladder(source, widths)
    for data in ladder:
        if len(data) <= max_bytes:
            return data
    width, quality = _next_attempt(min(source_width(source), widths[-1]), JPEG_QUALITY, len(ladder[-1]), max_bytes)
    for _ in range(ATTEMPTS):
        if width < 0:
            break
        data = jpeg_at_width(source, width, quality)
        if len(data) <= max_bytes:
            return data
        width, quality = _next_attempt(width, quality, len(data), max_bytes)
    raise RenderError(f"preview of {source}: no JPEG of it fits in {max_bytes} bytes")


def _next_attempt(width: int, quality: int, size: int, max_bytes: int) -> tuple[int, int]:
    """After a JPEG of ``size`` bytes at ``width`` and ``quality`` was too big: the next try (width -1: none).
    A small picture is quantised more coarsely first; a larger one is shrunk by the root of the excess."""
    if width <= SMALL_WIDTH and quality < COARSEST_QUALITY:
        return width, min(COARSEST_QUALITY, quality * 2 + 2)
    if width > MIN_WIDTH:
        shrunk = int(width * math.sqrt(max_bytes / size) * SHRINK_MARGIN)
        return max(MIN_WIDTH, shrunk - shrunk % 2), quality
    return -1, quality
