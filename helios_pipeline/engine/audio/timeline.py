"""The audio timeline shared by the chunks' page audio and the final mix.

Every source is resampled to 48 kHz stereo and placed in whole samples, so placement is
sample-accurate and chunk windows tile the render with no gap or overlap. This module owns the
sample grid (frame -> sample), the placement of a track on it (:func:`place_track`: where it starts,
what of its source it skips, where it stops being audible, its fades), the filter chain that renders
any window of a placed track (:func:`track_chain`) and the last line of a mix graph. ``page_audio``
(a chunk's window) and ``mix`` (the whole render's window) only say which tracks and which window,
so a track sounds at the same samples in a chunk's page audio and in the final mix.

Timeline model. Global sample ``s`` is composition time ``s / 48000`` (frame 0 at sample 0). A
track starts at composition time ``offset`` and plays its source from ``seek`` seconds on, at
``playback_rate`` (pitch kept), restarting from the source's beginning with ``loop``. Fades are
measured on the track's own timeline: the fade-in starts at ``offset`` (a window starting mid-fade
begins mid-fade); the fade-out ends where the track stops being audible: the end of its source
(non-looping track that ends before the render does) or else the end of the render.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from helios_pipeline.engine.encode import fps_fraction

SAMPLE_RATE = 48000
"""Every audio source is resampled to this rate before it is placed and mixed."""

TEMPO_TAIL_PAD = 8192
"""Samples of silence appended (per unit of speed-up) to a finite source before ``atempo``."""

NORMALISE = (
    f"aresample={SAMPLE_RATE}",
    "aformat=sample_fmts=fltp:channel_layouts=stereo",
    "asetpts=N/SR/TB",
)
"""First filters of every chain: 48 kHz float stereo, timestamps counted in samples from 0."""


def samples(seconds: float) -> int:
    """``seconds`` in whole samples at :data:`SAMPLE_RATE`."""
    return round(SAMPLE_RATE * seconds)


def frame_sample(frame: int, fps: float) -> int:
    """The global sample where frame ``frame`` starts: ``round(48000 * frame / fps)``, in exact arithmetic."""
    return round(Fraction(SAMPLE_RATE) * frame / fps_fraction(fps))


def sample_window(start_frame: int, end_frame: int, fps: float) -> tuple[int, int]:
    """The global samples ``[first, end)`` that frames ``[start_frame, end_frame)`` carry."""
    return frame_sample(start_frame, fps), frame_sample(end_frame, fps)


def tempo_filters(rate: float, loop: bool) -> list[str]:
    """The rate change (pitch kept): ``atempo`` stages (each within 0.5..2) whose product is ``rate``.

    atempo drops its last analysis window at the end of a stream (20-60 ms of a finite source), so a
    non-looping source first gets some silence appended; the caller cuts the track at its end.
    """
    stages: list[float] = []
    speed = rate
    while rate > 2.0:
        stages.append(2.0)
        rate /= 2.0
    while rate < 0.5:
        stages.append(0.5)
        rate /= 0.5
    if abs(rate - 1.0) > 1e-9:
        stages.append(rate)
    if not stages:
        return []
    pad = [] if loop else [f"apad=pad_len={TEMPO_TAIL_PAD * max(1, math.ceil(speed))}"]
    return pad + [f"atempo={stage:.10g}" for stage in stages]


def fade_filters(fade_in: int, fade_out_start: int, fade_out: int) -> list[str]:
    """Fades in track-local samples (afade places itself by timestamp: label samples track-locally first)."""
    chain = []
    if fade_in > 0:
        chain.append(f"afade=t=in:ss=0:ns={fade_in}")
    if fade_out > 0:
        chain.append(f"afade=t=out:ss={fade_out_start}:ns={fade_out}")
    return chain


def volume_filters(volume: float) -> list[str]:
    return [] if volume == 1.0 else [f"volume={volume:.10g}"]


def delay_filters(delay: int) -> list[str]:
    """Silence before the track (it starts after the first sample of the output)."""
    return [f"adelay=delays={delay}S:all=1"] if delay > 0 else []


def fit(total: int) -> list[str]:
    """Pad with silence and cut to exactly ``total`` samples (the asetpts is needed on FFmpeg 5.x-8.0)."""
    return ["apad", "asetpts=N/SR/TB", f"atrim=end_sample={total}"]


def mix_line(labels: list[str], total: int) -> str:
    """The graph's last line, output ``[aout]``: the labelled tracks summed at their own levels, or silence."""
    if not labels:
        return f"anullsrc=r={SAMPLE_RATE}:cl=stereo,atrim=end_sample={total}[aout]"
    return "".join(labels) + f"amix=inputs={len(labels)}:duration=longest:dropout_transition=0:normalize=0[aout]"


def source_inputs(sources: Iterable[tuple[str, bool]]) -> list[str]:
    """FFmpeg inputs for ``(source, loop)`` pairs; a looping source restarts at its end (``-stream_loop -1``)."""
    inputs: list[str] = []
    for source, loop in sources:
        inputs += [*(["-stream_loop", "-1"] if loop else []), "-i", source]
    return inputs


@dataclass(frozen=True, kw_only=True)
class TrackTiming:
    """Where and how a track sounds: what an explicit audio track and a page's media element share."""

    volume: float = 1.0
    offset: float = 0.0
    """Composition seconds where the track starts (negative: it started before frame 0)."""
    seek: float = 0.0
    """Seconds into the source where playback starts."""
    loop: bool = False
    playback_rate: float = 1.0
    fade_in: float = 0.0
    fade_out: float = 0.0
    duration: float | None = None
    """Seconds of the source's audio (None if unknown): where a non-looping track falls silent."""


@dataclass(frozen=True)
class Placement:
    """A track on the global sample grid. Track-local sample 0 (its offset) sounds at global sample ``start``.

    Track-local samples count after the rate change; the fades are in track-local samples.
    """

    timing: TrackTiming
    start: int
    """Global sample where the track starts (negative when it started before frame 0)."""
    seek: int
    """Source samples skipped at its beginning."""
    end: int
    """Track-local sample where it stops being audible (source end or render end)."""
    fade_in: int
    fade_out: int

    def sounds_in(self, window: tuple[int, int]) -> bool:
        """Is any of its audible part inside the global samples ``[first, last)``?"""
        first, last = window
        return self.start + self.end > first and self.start < last


def place_track(timing: TrackTiming, render_end: int) -> Placement | None:
    """Place a track on the global timeline; None when it is never audible before ``render_end`` (a sample)."""
    start = samples(timing.offset)
    seek = max(0, samples(timing.seek))
    length: float = math.inf
    if not timing.loop and timing.duration is not None:
        length = max(0, round((samples(timing.duration) - seek) / timing.playback_rate))
    end = min(start + length, render_end) - start
    if end <= 0:
        return None
    end = int(end)
    fade_out = min(samples(max(0.0, timing.fade_out)), end)
    return Placement(timing, start, seek, end, samples(max(0.0, timing.fade_in)), fade_out)


def track_chain(placement: Placement, window: tuple[int, int]) -> list[str]:
    """Filters that turn a track's input into its samples of ``window``, exactly ``last - first`` long.

    The result for a window is the whole-render result cut at the window: sources are decoded from
    their beginning, every filter after the cut is a function of the sample position only, and a
    rate change (atempo, which depends on what came before) runs from the track's start.
    """
    first, last = window
    timing = placement.timing
    skip = max(0, first - placement.start)  # track-local samples before the window
    chain = list(NORMALISE)
    tempo = tempo_filters(timing.playback_rate, timing.loop)
    if tempo:
        if placement.seek:
            chain += [f"atrim=start_sample={placement.seek}", "asetpts=N/SR/TB"]
        chain += [*tempo, "asetpts=N/SR/TB"]
    elif placement.seek + skip:
        chain += [f"atrim=start_sample={placement.seek + skip}", f"asetpts=(N+{skip})/SR/TB"]
    # afade places itself by timestamp: timestamps are track-local sample numbers here
    chain += fade_filters(placement.fade_in, placement.end - placement.fade_out, placement.fade_out)
    # atrim counts the samples it has seen (not timestamps)
    if tempo:
        chain.append(f"atrim=start_sample={skip}:end_sample={min(placement.end, last - placement.start)}")
    else:
        chain.append(f"atrim=end_sample={min(placement.end, last - placement.start) - skip}")
    chain += [*volume_filters(timing.volume), "asetpts=N/SR/TB"]
    return chain + delay_filters(max(0, placement.start - first)) + fit(last - first)


def track_lines(placements: Iterable[Placement], window: tuple[int, int], first_input: int) -> list[str]:
    """Graph lines ``[<input>:a:0]…[t<input>]``: the i-th placement read from input ``first_input + i``."""
    return [
        f"[{index}:a:0]" + ",".join(track_chain(placement, window)) + f"[t{index}]"
        for index, placement in enumerate(placements, start=first_input)
    ]
