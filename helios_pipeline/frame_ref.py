"""Frame references: ``75`` (a frame of the video) or ``2.5s`` (a time in the video), checked against its length.

One parser serves the ``still`` command's ``--frame`` and the spec's ``poster_frame``, so both read
the same way. Frames and times are on the video's own timeline: frame 0 and ``0s`` are its first
frame (the composition's ``start_frame``). A time names the frame a player shows at that moment,
``floor(t × fps)``: at 30 fps ``2.5s`` is frame 75, at 29.97 fps frame 74 (74.925 rounds down).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

FrameRef = int | str
"""A frame number, or text: ``"75"`` or ``"2.5s"``."""

_FRAME = re.compile(r"[+-]?\d+")
_TIME = re.compile(r"(?P<seconds>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*s")
_TOLERANCE = Fraction(1, 10**6)
"""How close (in frames) ``t × fps`` may fall below a whole frame and still count as that frame (float noise)."""


class FrameError(ValueError):
    """A frame reference that is malformed or outside the video; the message says which frames are valid."""


def valid_range(fps: float, total_frames: int) -> str:
    """The frames (and times) a reference may name, for error messages."""
    last = total_frames - 1
    return f"frames 0 to {last} (0s to {last / fps:.3f}s at {fps:g} fps)"


def time_to_frame(seconds: Fraction, fps: float) -> int:
    """The frame on screen at ``seconds``: ``floor(seconds × fps)``, forgiving float noise just below a frame."""
    exact = seconds * Fraction(str(fps))
    return math.floor(exact + _TOLERANCE)


def parse_frame(value: FrameRef, fps: float, total_frames: int) -> int:
    """The video frame ``value`` names (``75``, ``"75"`` or ``"2.5s"``); raises FrameError when it is
    malformed, negative or past the end."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise FrameError(f"{value!r} is not a frame: give a frame number (75) or a time in seconds (2.5s)")
    text = str(value).strip()
    named = repr(text)
    if _FRAME.fullmatch(text):
        frame = int(text)
    elif match := _TIME.fullmatch(text):
        seconds = Fraction(match["seconds"])
        if seconds < 0:
            raise FrameError(f"{text!r} is before the start of the video; valid: {valid_range(fps, total_frames)}")
        frame = time_to_frame(seconds, fps)
        named = f"{text!r} (frame {frame})"
    else:
        raise FrameError(f"{text!r} is not a frame: give a frame number (75) or a time in seconds (2.5s)")
    if frame < 0:
        raise FrameError(f"{named} is negative; valid: {valid_range(fps, total_frames)}")
    if frame >= total_frames:
        raise FrameError(f"{named} is past the end of the video; valid: {valid_range(fps, total_frames)}")
    return frame
