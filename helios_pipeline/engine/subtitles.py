"""Burned-in subtitles on the render's global timeline.

SRT cue times are composition times (frame ``n`` is at ``n / fps`` s). Each chunk's video starts
at time 0, so a chunk gets its own SRT whose cues are shifted by the chunk's start time, clipped
to its frame range, and burned in with FFmpeg's ``subtitles`` filter (libass) while the chunk is
encoded. The seed's renderer burned the whole file into every chunk with chunk-local times, so
every chunk after the first showed the cues of the start of the video.

A frame shows a cue when the frame's time ``t`` satisfies ``start <= t < end`` (computed exactly,
from the integer frame). The chunk SRT states each cue's frames, not its raw times: a cue starts
half a frame before its first frame and ends half a frame before the first frame after it, so
libass's millisecond rounding of frame times can never move a cue edge by a frame.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from helios_pipeline.engine.errors import RenderError

SUBTITLE_STYLE = (
    "Fontname=DejaVu Sans,Fontsize=16,PrimaryColour=&H00FFFFFF,OutlineColour=&H00000000,"
    "BorderStyle=1,Outline=1.5,Shadow=0,MarginV=12"
)
"""libass ``force_style``: white DejaVu Sans (installed with the engine) with a black outline.
Sizes are in the 384x288 script space FFmpeg gives SRT files, scaled to the video."""

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


def cue_frames(cue: Cue, fps: Fraction) -> range:
    """The composition frames that show ``cue``: every ``n`` with ``start <= n / fps < end``."""
    first = math.ceil(Fraction(cue.start_ms, 1000) * fps)
    stop = math.ceil(Fraction(cue.end_ms, 1000) * fps)
    return range(first, stop)


def _format_time(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d},{millis:03d}"


def _edge_ms(local_frame: int, fps: Fraction) -> int:
    """A time half a frame before ``local_frame``: after the previous frame, before this one."""
    if local_frame <= 0:
        return 0
    return round((local_frame - Fraction(1, 2)) * 1000 / fps)


def chunk_cues(cues: list[Cue], fps: Fraction, start_frame: int, frame_count: int) -> list[tuple[int, int, Cue]]:
    """The cues a chunk of frames ``[start_frame, start_frame + frame_count)`` shows, as chunk-local
    ``(start_ms, end_ms, cue)`` whose edges sit between frames. Cues outside the range are dropped;
    cues that straddle its start or end are clipped to it."""
    shifted = []
    for cue in cues:
        if not any(line.strip() for line in cue.lines):
            continue  # nothing to show
        frames = cue_frames(cue, fps)
        first = max(frames.start, start_frame) - start_frame
        stop = min(frames.stop, start_frame + frame_count) - start_frame
        if first < stop:
            shifted.append((_edge_ms(first, fps), _edge_ms(stop, fps), cue))
    return shifted


def format_srt(cues: list[tuple[int, int, Cue]]) -> str:
    blocks = []
    for number, (start, end, cue) in enumerate(cues, 1):
        text = "\n".join(line for line in cue.lines if line.strip())
        blocks.append(f"{number}\n{_format_time(start)} --> {_format_time(end)}\n{text}\n")
    return "\n".join(blocks)


@contextlib.contextmanager
def chunk_srt(source: Path, output: Path, fps: Fraction, start_frame: int, frame_count: int) -> Iterator[Path | None]:
    """The chunk's own SRT, written beside the chunk ``output`` and removed afterwards; None when no
    cue falls in the chunk (then nothing needs burning)."""
    try:
        cues = chunk_cues(read_srt(source), fps, start_frame, frame_count)
    except SrtError as exc:
        raise RenderError(f"subtitles: {exc}") from None
    if not cues:
        yield None
        return
    target = output.with_name(f".{output.stem}.subtitles-{os.getpid()}.srt")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(format_srt(cues), encoding="utf-8")
        yield target
    finally:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()


def _quote_option(value: str) -> str:
    """Quote a filter option value (first level of FFmpeg's escaping: ``'`` ends a quoted run)."""
    return "'" + value.replace("'", "'\\''") + "'"


def _escape_graph(text: str) -> str:
    """Escape filter arguments for the filtergraph parser (second level of FFmpeg's escaping)."""
    return "".join("\\" + char if char in "\\'[],;" else char for char in text)


def subtitles_filter(srt: Path, style: str = SUBTITLE_STYLE) -> str:
    """A ``subtitles=`` filter for ``-vf`` that burns ``srt`` in; any path is escaped correctly."""
    options = f"filename={_quote_option(str(srt))}:force_style={_quote_option(style)}"
    return "subtitles=" + _escape_graph(options)
