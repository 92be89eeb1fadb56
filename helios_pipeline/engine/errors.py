"""Engine error types: each says what failed, where, and why."""

from __future__ import annotations

from helios_pipeline.disk_full import DiskFull


class RenderError(RuntimeError):
    """A render step failed (browser, page, FFmpeg); the message names the chunk or file."""


class NoSpaceError(RenderError, DiskFull):
    """A file could not be written because its volume is full; the message names the path."""


class ToolNotFoundError(RenderError):
    """A system tool (Chromium, FFmpeg) is missing; the message says how to install it."""


class PageError(RenderError):
    """The composition failed: it threw, crashed, or a frame never became ready."""

    def __init__(self, message: str, frame: int | None = None):
        self.frame = frame
        self.reason = message
        super().__init__(message if frame is None else f"frame {frame}: {message}")


class RenderCancelled(RenderError):
    """The render was cancelled (Ctrl-C or a cancel event); nothing was left behind."""


class StuckError(RenderError):
    """Chromium or FFmpeg stopped answering, so the chunk was ended and its processes killed.

    Unlike a :class:`PageError` this is not the composition's fault: a retry may well succeed.
    """

    def __init__(self, message: str, frame: int | None = None):
        self.frame = frame
        super().__init__(message if frame is None else f"frame {frame}: {message}")
