"""The final pass: one FFmpeg run that copies the concatenated video and mixes every audio source once.

Audio is never encoded per chunk (AAC joined by stream copy leaves a gap at every seam); the
concatenated video is video-only, or carries the page's own audio as PCM. This pass places each
explicit :class:`~helios_pipeline.spec.AudioTrack` on the render's global timeline, mixes it with
the page audio, pads or trims the result to exactly ``total_frames / fps`` and encodes it once.

Placement. The render carries the global samples of its frames (:func:`.timeline.sample_window`),
exactly as its chunks' page audio does; each track is placed on that timeline and rendered for that
window by the same functions as a page's media element (:func:`.timeline.place_track`,
:func:`.timeline.track_chain`), so an explicit track and a page element with the same attributes
sound at the same samples.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from helios_pipeline.engine import probe as probe_mod
from helios_pipeline.engine.audio.timeline import (
    NORMALISE,
    SAMPLE_RATE,
    TrackTiming,
    fit,
    mix_line,
    place_track,
    sample_window,
    source_inputs,
    track_lines,
)
from helios_pipeline.engine.encode import timescale_args
from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.ffmpeg import ffmpeg_command, run_ffmpeg
from helios_pipeline.engine.fileio import atomic_output, partial_path
from helios_pipeline.engine.probe import audio_stream_duration
from helios_pipeline.plan import MixOptions
from helios_pipeline.spec import AudioTrack

FASTSTART_SUFFIXES = (".mp4", ".mov", ".m4v", ".m4a")
"""Containers that get ``-movflags +faststart`` (index moved to the front for streaming)."""

WEBM_AUDIO_CODECS = ("libopus", "opus", "libvorbis", "vorbis")


@dataclass(frozen=True)
class MixResult:
    """What the final pass produced (plain numbers, so Dagster can plot them)."""

    output_file: str
    seconds: float
    """Wall time of the mix, in seconds."""
    bytes: int
    duration: float
    video_codec: str
    audio_codec: str | None
    audio_tracks: int
    """Audio sources mixed: audible explicit tracks, plus one for the input video's own audio."""


def render_window(options: MixOptions) -> tuple[int, int]:
    """The global samples ``[first, last)`` of the render: the union of its chunks' page-audio windows."""
    return sample_window(options.start_frame, options.start_frame + options.total_frames, options.fps)


def total_samples(options: MixOptions) -> int:
    """The exact audio length of the output, ``round(48000 * frames / fps)`` (from frame 0; within a sample)."""
    first, last = render_window(options)
    return last - first


def output_audio_codec(audio_codec: str, output: Path) -> str:
    """The audio encoder to use for ``output``: AAC requested for a ``.webm`` becomes ``libopus``."""
    if output.suffix.lower() == ".webm" and audio_codec not in WEBM_AUDIO_CODECS:
        return "libopus"
    return audio_codec


def probe_audio_duration(path: Path) -> float | None:
    """Duration in seconds of the first audio stream of ``path`` (None if unknown).

    Raises RenderError naming the file when FFmpeg cannot read it or it has no audio stream.
    """
    failure = f"audio track {path}: FFmpeg cannot decode it"
    has_audio, duration = audio_stream_duration(path, failure)
    if not has_audio:
        raise RenderError(f"{failure}: no audio stream")
    return duration


def _timing(track: AudioTrack, source_duration: float | None) -> TrackTiming:
    return TrackTiming(
        volume=track.volume,
        offset=track.offset,
        seek=track.seek,
        loop=track.loop,
        playback_rate=track.playback_rate,
        fade_in=track.fade_in_duration,
        fade_out=track.fade_out_duration,
        duration=source_duration,
    )


def mix_filter_graph(
    options: MixOptions,
    *,
    input_has_audio: bool,
    source_durations: Sequence[float | None] | None = None,
) -> tuple[str, list[AudioTrack]] | None:
    """The ``-filter_complex`` graph (output label ``[aout]``) and the tracks it reads, in input order.

    Input 0 is the video; input ``i`` (from 1) is the i-th returned track. Tracks that are not
    audible in the render window are left out. None when there is no audio at all.
    """
    tracks = options.audio_tracks
    if not tracks and not input_has_audio:
        return None
    durations = list(source_durations) if source_durations is not None else [None] * len(tracks)
    if len(durations) != len(tracks):
        raise ValueError(f"{len(durations)} source durations for {len(tracks)} tracks")
    window = render_window(options)
    total = window[1] - window[0]
    placed = [
        (track, placement)
        for track, duration in zip(tracks, durations, strict=True)
        if (placement := place_track(_timing(track, duration), window[1])) and placement.sounds_in(window)
    ]
    lines = ["[0:a:0]" + ",".join([*NORMALISE, *fit(total)]) + "[page]"] if input_has_audio else []
    lines += track_lines([placement for _, placement in placed], window, first_input=1)
    labels = ["[page]"] * input_has_audio + [f"[t{i}]" for i in range(1, len(placed) + 1)]
    # Tracks given but none audible here: still an audio stream, silent, of the exact length.
    lines.append(mix_line(labels, total))
    return ";\n".join(lines) + "\n", [track for track, _ in placed]


def mix_command(
    options: MixOptions,
    video: Path,
    output: Path,
    *,
    input_has_audio: bool,
    source_durations: Sequence[float | None] | None = None,
    filter_script: Path | None = None,
) -> list[str]:
    """The FFmpeg command of the final pass.

    Video is stream-copied (``options.video_codec``, "copy" by default); audio, if any, is encoded
    once with ``options.audio_codec`` at ``options.audio_bitrate``. A ``.webm`` output cannot
    hold AAC, so any codec other than Opus/Vorbis becomes ``libopus`` there. Without tracks and
    without input audio the video is only remuxed (no audio stream). MP4/MOV get
    ``+faststart``; metadata is dropped (``-map_metadata -1``).

    ``source_durations`` (one per track, seconds) places fade-outs at the end of non-looping
    sources; when omitted, fade-outs end at the render end. With ``filter_script`` the graph is
    read from that file (``-filter_complex_script``; the caller writes :func:`mix_filter_graph`
    to it), otherwise it is passed inline.
    """
    head = ffmpeg_command("-i", str(video))
    tail = ["-map_metadata", "-1", *timescale_args(options.fps, output)]
    if output.suffix.lower() in FASTSTART_SUFFIXES:
        tail += ["-movflags", "+faststart"]
    video_args = ["-map", "0:v:0", "-c:v", options.video_codec]
    graph = mix_filter_graph(options, input_has_audio=input_has_audio, source_durations=source_durations)
    if graph is None:
        return [*head, *video_args, "-an", *tail, str(output)]
    text, used = graph
    inputs = source_inputs((str(track.path), track.loop) for track in used)
    filter_args = ["-filter_complex_script", str(filter_script)] if filter_script else ["-filter_complex", text]
    audio_args = ["-map", "[aout]", "-c:a", output_audio_codec(options.audio_codec, output)]
    if options.audio_bitrate:
        audio_args += ["-b:a", options.audio_bitrate]
    audio_args += ["-ar", str(SAMPLE_RATE), "-ac", "2"]
    return [*head, *inputs, *filter_args, *video_args, *audio_args, *tail, str(output)]


def mix_final(options: MixOptions, video: Path, output: Path) -> MixResult:
    """Write ``output``: ``video`` stream-copied plus every audio source mixed and encoded once.

    The input video's own audio (PCM from the chunks), when present, is one more mix input at
    volume 1. The output appears under its final name only when FFmpeg succeeded; on failure a
    RenderError names the output (or the unreadable audio file) and carries FFmpeg's message.
    """
    started = time.monotonic()
    video, output = Path(video), Path(output)
    input_has_audio = probe_mod.probe(video).audio_codec is not None  # the concat's own probe, when it was here
    durations = [probe_audio_duration(track.path) for track in options.audio_tracks]
    graph = mix_filter_graph(options, input_has_audio=input_has_audio, source_durations=durations)
    with atomic_output(output) as temp:
        script: Path | None = None
        try:
            if graph is not None:
                script = partial_path(output, ".filtergraph")  # removed with the partial video if this is killed
                script.write_text(graph[0], encoding="utf-8")
            command = mix_command(
                options,
                video,
                temp,
                input_has_audio=input_has_audio,
                source_durations=durations,
                filter_script=script,
            )
            run_ffmpeg(command, f"final mix of {output}")
        finally:
            if script is not None:
                with contextlib.suppress(FileNotFoundError):
                    script.unlink()
    info = probe_mod.probe(output)
    return MixResult(
        output_file=str(output),
        seconds=time.monotonic() - started,
        bytes=info.size_bytes,
        duration=info.duration,
        video_codec=info.video_codec,
        audio_codec=info.audio_codec,
        audio_tracks=0 if graph is None else len(graph[1]) + int(input_has_audio),
    )
