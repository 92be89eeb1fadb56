"""Images that show in Dagster's UI: a reduced-size JPEG embedded in Markdown metadata as a data URI.

The UI runs in the user's browser, which cannot load a file path on the server (and a presigned
link expires): the picture travels inside the event itself, kept small so the event log stays light.
The full-size file stays beside the video.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import dagster as dg

from helios_pipeline.engine.ffmpeg import ffmpeg_command, run_ffmpeg

PREVIEW_WIDTHS = (960, 640, 480, 320, 160)
"""Widths tried in turn (never enlarging) until the embedded image fits ``max_bytes``."""
JPEG_QSCALE = "4"
"""FFmpeg's MJPEG quality scale (2 best .. 31 worst): a light preview that still reads well."""


def _jpeg(path: Path, width: int, scratch: Path) -> bytes:
    target = scratch / f"preview-{width}.jpg"
    command = ffmpeg_command(
        "-i", str(path),
        "-vf", f"scale='min({width},iw)':-2:flags=area,format=yuvj420p",
        "-frames:v", "1", "-update", "1", "-q:v", JPEG_QSCALE, str(target),
    )  # fmt: skip
    run_ffmpeg(command, f"preview of {path}")
    return target.read_bytes()


def embedded_image(path: Path, max_bytes: int = 150_000) -> dg.MarkdownMetadataValue:
    """``path`` (any image FFmpeg reads) as Markdown with the image inline, its data URI under ``max_bytes``.

    The widest of ``PREVIEW_WIDTHS`` that fits is used; transparency is dropped (JPEG has none). A
    preview is never worth failing a render: when none fits, the Markdown says so instead.
    """
    with tempfile.TemporaryDirectory(prefix="helios-preview-") as scratch:
        for width in PREVIEW_WIDTHS:
            uri = "data:image/jpeg;base64," + base64.b64encode(_jpeg(Path(path), width, Path(scratch))).decode("ascii")
            if len(uri) <= max_bytes:
                return dg.MetadataValue.md(f"![{Path(path).name}]({uri})")
    return dg.MetadataValue.md(f"*{Path(path).name}: no preview fits in {max_bytes} bytes*")
