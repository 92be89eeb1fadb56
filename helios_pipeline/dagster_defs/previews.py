"""Pictures in the UI: a file's reduced JPEG embedded in Markdown metadata as a data URI.

The webserver cannot serve files from the machine that rendered them (and a ``file://`` link
shows a broken image in the browser), so the picture travels inside the event itself. Its size
is bounded so that the event log, and every page that lists events, stays light.
"""

from __future__ import annotations

import base64
from pathlib import Path

import dagster as dg

from helios_pipeline.engine.thumbnail import jpeg_within

DATA_URI_PREFIX = "data:image/jpeg;base64,"


def embedded_image(path: Path, max_bytes: int = 150_000) -> dg.MarkdownMetadataValue:
    """``path`` (an image, or a video's first frame) as a Markdown image of at most ``max_bytes`` characters.

    The budget is for the whole Markdown text, base64 included (what the event log stores); the
    JPEG is scaled down until it fits. Raises ``RenderError`` naming the file when it cannot be read.
    """
    head = f"![{path.name}]({DATA_URI_PREFIX}"
    jpeg_budget = (max_bytes - len(head) - 1) * 3 // 4  # base64: 4 characters per 3 bytes
    encoded = base64.b64encode(jpeg_within(path, jpeg_budget)).decode("ascii")
    return dg.MetadataValue.md(f"{head}{encoded})")
