"""Pictures in the UI: a file's reduced JPEG embedded in Markdown metadata as a data URI.

The webserver cannot serve files from the machine that rendered them (and a ``file://`` link
shows a broken image in the browser), so the picture travels inside the event itself. Its size
is bounded so that the event log, and every page that lists events, stays light.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from helios_pipeline.engine.thumbnail import jpeg_within

DATA_URI_PREFIX = "data:image/jpeg;base64,"


def _markdown_head(path: Path) -> str:
    return f"![{path.name}]({DATA_URI_PREFIX}"


def jpeg_budget(path: Path, max_bytes: int) -> int:
    """The bytes of JPEG that ``path``'s Markdown image may hold within ``max_bytes`` characters."""
    return (max_bytes - len(_markdown_head(path)) - 1) * 3 // 4  # base64: 4 characters per 3 bytes


def embedded_image(path: Path, max_bytes: int = 150_000, ladder: Sequence[bytes] = ()) -> dg.MarkdownMetadataValue:
    """``path`` (an image, or a video's first frame) as a Markdown image of at most ``max_bytes`` characters.

    The budget is for the whole Markdown text, base64 included (what the event log stores); the
    JPEG is scaled down until it fits. ``ladder``: the JPEGs to choose from, made already at
    ``preview_widths(jpeg_budget(path, max_bytes))`` (a contact sheet's). Raises ``RenderError`` naming the file
    when it cannot be read.
    """
    encoded = base64.b64encode(jpeg_within(path, jpeg_budget(path, max_bytes), ladder)).decode("ascii")
    return dg.MetadataValue.md(f"{_markdown_head(path)}{encoded})")
