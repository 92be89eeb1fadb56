"""Deployment-wide limits on one render: frames, duration and pixels a frame.

A spec may be valid and still ask for a billion frames or a 100 megapixel frame; a deployment caps
what one render may cost. The limits are environment settings read when a render is checked, so
the CLI (``--local`` too), the inbox sensor, schedules and renders added in the UI apply the same
ones; their defaults are generous (4 hours, 8K) and each message names the setting that raises it.
Below the engine: no FFmpeg, no Dagster.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from helios_pipeline.spec import RenderSpec

MAX_FRAMES_SETTING = "HELIOS_MAX_FRAMES"
MAX_DURATION_SETTING = "HELIOS_MAX_DURATION"
MAX_PIXELS_SETTING = "HELIOS_MAX_PIXELS"
DEFAULT_MAX_DURATION_S = 4 * 3600
DEFAULT_MAX_FRAMES = DEFAULT_MAX_DURATION_S * 60
"""Four hours at 60 fps; a 240 fps render is capped at one hour by frames before its duration."""
DEFAULT_MAX_PIXELS = 7680 * 4320

T = TypeVar("T")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1}
_SIZE = re.compile(r"^(\d+)\s*[xX×]\s*(\d+)$")


class SettingError(ValueError):
    """A deployment setting (a limit, the network policy) that is not a valid value; the message names it."""


def parse_duration(text: str) -> float:
    """Seconds from ``14400``, ``4h``, ``90m``, ``1h30m`` or ``45.5s``; ValueError otherwise."""
    compact = text.strip().lower().replace(" ", "")
    try:
        seconds = float(compact)
    except ValueError:
        parts = _DURATION_PART.findall(compact)
        if not parts or "".join(number + unit for number, unit in parts) != compact:
            raise ValueError(f"expected seconds or a duration like 4h, 90m or 1h30m, got {text!r}") from None
        seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"must be more than 0 seconds, got {text!r}")
    return seconds


def parse_pixels(text: str) -> int:
    """Pixels a frame from ``33177600`` or ``7680x4320``; ValueError otherwise."""
    compact = text.strip()
    if match := _SIZE.match(compact):
        pixels = int(match.group(1)) * int(match.group(2))
    elif compact.isdigit():
        pixels = int(compact)
    else:
        raise ValueError(f"expected a number of pixels or a size like 7680x4320, got {text!r}")
    if pixels < 1:
        raise ValueError(f"must be at least 1 pixel, got {text!r}")
    return pixels


def format_duration(seconds: float) -> str:
    """``45.5 s``, ``4 h``, ``1 h 30 min``: how a duration reads in a message (whole seconds from a minute on)."""
    if seconds < 60:
        return f"{seconds:g} s"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else "", f"{secs} s" if secs else ""]
    return " ".join(part for part in parts if part)


def _setting(environ: Mapping[str, str], name: str, default: str, parse: Callable[[str], T]) -> T:
    raw = environ.get(name) or default
    try:
        return parse(raw)
    except ValueError as exc:
        raise SettingError(f"{name}: {exc}") from None


def _whole_number(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


@dataclass(frozen=True)
class RenderLimits:
    """What one render may ask for in this deployment."""

    max_frames: int = DEFAULT_MAX_FRAMES
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RenderLimits:
        """HELIOS_MAX_FRAMES (864000), HELIOS_MAX_DURATION (4h; seconds or 4h/90m/1h30m),
        HELIOS_MAX_PIXELS (7680x4320; pixels or WxH); a bad value raises :class:`SettingError`."""
        env = os.environ if environ is None else environ
        return cls(
            max_frames=_setting(env, MAX_FRAMES_SETTING, str(DEFAULT_MAX_FRAMES), _whole_number),
            max_duration_s=_setting(env, MAX_DURATION_SETTING, str(DEFAULT_MAX_DURATION_S), parse_duration),
            max_pixels=_setting(env, MAX_PIXELS_SETTING, str(DEFAULT_MAX_PIXELS), parse_pixels),
        )

    def problems(self, spec: RenderSpec) -> list[tuple[str, str]]:
        """(field, reason) for every limit ``spec`` exceeds; each reason names the limit and its setting."""
        problems: list[tuple[str, str]] = []
        length_field = "frame_count" if spec.frame_count is not None else "duration_in_seconds"
        frames = spec.total_frames
        if frames > self.max_frames:
            problems.append((length_field, f"{frames} frames exceed this deployment's limit of {self.max_frames} "
                             f"({MAX_FRAMES_SETTING}); render fewer frames or raise the limit"))  # fmt: skip
        seconds = frames / spec.fps
        if seconds > self.max_duration_s:
            problems.append((length_field, f"{format_duration(seconds)} of video exceeds this deployment's limit "
                             f"of {format_duration(self.max_duration_s)} ({MAX_DURATION_SETTING}); render a shorter "
                             "video or raise the limit"))  # fmt: skip
        pixels = spec.width * spec.height
        if pixels > self.max_pixels:
            problems.append(("width, height", f"{spec.width}x{spec.height} is {pixels} pixels a frame, more than "
                             f"this deployment's limit of {self.max_pixels} ({MAX_PIXELS_SETTING}, default "
                             "7680x4320); make it smaller or raise the limit"))  # fmt: skip
        return problems
