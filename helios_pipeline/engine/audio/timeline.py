"""The audio timeline shared by the chunks' page audio and the final mix.

Every source is resampled to 48 kHz stereo and placed in whole samples, so placement is
sample-accurate and chunk windows tile the render with no gap or overlap. This module owns the
sample grid (frame -> sample), the filter fragments every track chain is made of (normalise, rate
change, fades, level, delay, fit to length) and the last line of a mix graph; ``page_audio`` and
``mix`` only decide where each track sits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
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
