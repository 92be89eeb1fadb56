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
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

from helios_pipeline.engine.errors import RenderError
from helios_pipeline.srt import Cue, SrtError, format_srt, read_srt

SUBTITLE_STYLE = (
    "Fontname=DejaVu Sans,Fontsize=16,PrimaryColour=&H00FFFFFF,OutlineColour=&H00000000,"
    "BorderStyle=1,Outline=1.5,Shadow=0,MarginV=12"
)
"""libass ``force_style``: white DejaVu Sans (installed with the engine) with a black outline.
Sizes are in the 384x288 script space FFmpeg gives SRT files, scaled to the video."""


def cue_frames(cue: Cue, fps: Fraction) -> range:
    """The composition frames that show ``cue``: every ``n`` with ``start <= n / fps < end``."""
    first = math.ceil(Fraction(cue.start_ms, 1000) * fps)
    stop = math.ceil(Fraction(cue.end_ms, 1000) * fps)
    return range(first, stop)


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
