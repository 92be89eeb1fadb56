"""Small JPEG previews: an image, or a video's first frame, scaled down until it fits a byte budget.

Previews travel inside Dagster's event log (as data URIs), so their size matters more than their
sharpness: the picture is never scaled up, and each attempt that is too big is scaled down by the
square root of the excess (a JPEG's size grows with its area); a picture already small is
quantised more coarsely instead, as shrinking it further would lose more.
"""

from __future__ import annotations

import math
from pathlib import Path

from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.ffmpeg import ffmpeg_command, ffmpeg_stdout, run_ffprobe

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
        "-vf", f"scale={width}:-2:flags=area,format=yuvj420p",
        "-q:v", str(quality), "-f", "image2pipe", "-c:v", "mjpeg", "pipe:1",
    )  # fmt: skip
    return ffmpeg_stdout(command, f"preview of {source}")


def jpeg_within(source: Path, max_bytes: int) -> bytes:
    """A JPEG of ``source`` (an image, or a video's first frame) of at most ``max_bytes`` bytes.

    Raises ``RenderError`` naming the file when it is missing, has no picture, or cannot fit.
    """
    if not source.is_file():
        raise RenderError(f"preview of {source}: no such file")
    guess = max(SMALL_WIDTH, int(math.sqrt(max(max_bytes, 0)) * WIDTH_PER_ROOT_BYTE))
    width, quality = min(source_width(source), START_WIDTH, guess), JPEG_QUALITY
    for _ in range(ATTEMPTS):
        width = max(MIN_WIDTH, width - width % 2)
        data = jpeg_at_width(source, width, quality)
        if len(data) <= max_bytes:
            return data
        if width <= SMALL_WIDTH and quality < COARSEST_QUALITY:
            quality = min(COARSEST_QUALITY, quality * 2 + 2)
        elif width > MIN_WIDTH:
            width = int(width * math.sqrt(max_bytes / len(data)) * SHRINK_MARGIN)
        else:
            break
    raise RenderError(f"preview of {source}: no JPEG of it fits in {max_bytes} bytes")
