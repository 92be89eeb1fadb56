"""SRT subtitle files: parse and write the format (no timeline, no FFmpeg).

Below both the spec (which checks a subtitles file when it is validated) and the engine (which
cuts it per chunk), so the spec never imports the engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_TIME = r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(?:\s+.*)?$")


class SrtError(ValueError):
    """A malformed SRT file; the message names the cue and the line."""


@dataclass(frozen=True)
class Cue:
    """One subtitle: shown while ``start_ms <= t < end_ms`` on the composition's timeline."""

    number: int
    start_ms: int
    end_ms: int
    lines: tuple[str, ...]


def _ms(hours: str, minutes: str, seconds: str, millis: str) -> int:
    if int(minutes) >= 60 or int(seconds) >= 60:
        raise ValueError(f"{hours}:{minutes}:{seconds} is not a valid time")
    return ((int(hours) * 60 + int(minutes)) * 60 + int(seconds)) * 1000 + int(millis.ljust(3, "0"))


def parse_srt(text: str) -> list[Cue]:
    """Parse SRT text: blocks of an index line, ``HH:MM:SS,mmm --> HH:MM:SS,mmm`` and text lines,
    separated by blank lines. Raises SrtError naming the cue number and line of the first problem."""
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    cues: list[Cue] = []
    position = 0
    while position < len(lines):
        if not lines[position].strip():
            position += 1
            continue
        block_line = position + 1
        block: list[str] = []
        while position < len(lines) and lines[position].strip():
            block.append(lines[position])
            position += 1
        ordinal = len(cues) + 1
        index = block[0].strip()
        if not index.isdigit():
            raise SrtError(f"cue {ordinal} (line {block_line}): expected the cue number, found {index[:60]!r}")
        number = int(index)
        if len(block) < 2:
            raise SrtError(f"cue {number} (line {block_line}): missing the timing line 'HH:MM:SS,mmm --> HH:MM:SS,mmm'")
        match = _TIMING.match(block[1])
        if match is None:
            raise SrtError(
                f"cue {number} (line {block_line + 1}): expected 'HH:MM:SS,mmm --> HH:MM:SS,mmm', "
                f"found {block[1].strip()[:60]!r}"
            )
        try:
            start, end = _ms(*match.groups()[:4]), _ms(*match.groups()[4:])
        except ValueError as exc:
            raise SrtError(f"cue {number} (line {block_line + 1}): {exc}") from None
        if end <= start:
            raise SrtError(f"cue {number} (line {block_line + 1}): ends at or before its start")
        cues.append(Cue(number=number, start_ms=start, end_ms=end, lines=tuple(line.rstrip() for line in block[2:])))
    return cues


def read_srt(path: Path) -> list[Cue]:
    """Parse an SRT file (UTF-8, BOM allowed); errors name the file."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise SrtError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SrtError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return parse_srt(text)
    except SrtError as exc:
        raise SrtError(f"{path}: {exc}") from None


def format_time(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d},{millis:03d}"


def format_srt(cues: list[tuple[int, int, Cue]]) -> str:
    blocks = []
    for number, (start, end, cue) in enumerate(cues, 1):
        text = "\n".join(line for line in cue.lines if line.strip())
        blocks.append(f"{number}\n{format_time(start)} --> {format_time(end)}\n{text}\n")
    return "\n".join(blocks)
