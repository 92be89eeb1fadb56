"""Where a video's poster lives, apart from the still renderer that draws it.

A final run names the poster file whether or not it renders one; keeping the name here lets the
mix and the assets import it without loading the capture engine (``engine/still.py``), which only a run
that renders a poster needs.
"""

from __future__ import annotations

from pathlib import Path


def poster_path(video: Path) -> Path:
    """The poster beside a video: ``<stem>.poster.png`` (like its ``<stem>.contact.png``)."""
    return video.with_name(f"{video.stem}.poster.png")
