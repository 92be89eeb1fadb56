"""ffprobe helpers: what a rendered file really contains."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.ffmpeg import run_ffprobe


@dataclass(frozen=True)
class MediaInfo:
    """The facts about a video file that checks and metadata need."""

    path: Path
    duration: float
    video_frames: int
    width: int
    height: int
    frame_rate: Fraction
    video_codec: str
    pixel_format: str
    audio_codec: str | None
    audio_sample_rate: int | None
    audio_duration: float | None
    size_bytes: int


def count_video_frames(path: Path) -> int:
    """Count video packets (one per frame for the codecs we write) without decoding."""
    data = run_ffprobe(path, "-select_streams", "v:0", "-count_packets", "-show_entries", "stream=nb_read_packets")
    streams = data.get("streams") or []
    if not streams:
        raise RenderError(f"{path} has no video stream")
    return int(streams[0].get("nb_read_packets") or 0)


PROBES_KEPT = 64
"""Probes remembered per process (see ``probe``): a render's final run probes a handful of files."""


def probe(path: Path) -> MediaInfo:
    """Read streams, duration and frame count of ``path``.

    One ffprobe per file content: a render's last run asked it of the same file up to three times (the
    mix, the asset's metadata, the check), at ~50 ms each on its critical path. A file is the same while
    its device, inode, size and modification time are (a rename keeps them: a probe of an output's
    temporary name serves its final name); a file rewritten or replaced is probed again.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return _probe_file(path)  # ffprobe says why it cannot be read
    content = _FileContent((stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns), path)
    return dataclasses.replace(_probe_content(content), path=path)


@dataclass(frozen=True)
class _FileContent:
    """A file's content as the cache knows it: equal when the identity is, whatever the name it is reached by."""

    identity: tuple[int, int, int, int]
    path: Path = dataclasses.field(compare=False)


@functools.lru_cache(maxsize=PROBES_KEPT)
def _probe_content(content: _FileContent) -> MediaInfo:
    return _probe_file(content.path)


def _probe_file(path: Path) -> MediaInfo:
    data = run_ffprobe(
        path,
        "-count_packets",
        "-show_entries",
        "format=duration,size:stream=codec_type,codec_name,width,height,avg_frame_rate,r_frame_rate,"
        "pix_fmt,sample_rate,duration,nb_read_packets",
    )
    streams = data.get("streams") or []
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None:
        raise RenderError(f"{path} has no video stream")
    rate = video.get("avg_frame_rate") or video.get("r_frame_rate") or "0/1"
    fmt = data.get("format") or {}
    return MediaInfo(
        path=path,
        duration=float(fmt.get("duration") or 0.0),
        video_frames=int(video.get("nb_read_packets") or 0),
        width=int(video.get("width") or 0),
        height=int(video.get("height") or 0),
        frame_rate=Fraction(rate) if rate != "0/0" else Fraction(0),
        video_codec=str(video.get("codec_name")),
        pixel_format=str(video.get("pix_fmt")),
        audio_codec=audio.get("codec_name") if audio else None,
        audio_sample_rate=int(audio["sample_rate"]) if audio and audio.get("sample_rate") else None,
        audio_duration=float(audio["duration"]) if audio and audio.get("duration") else None,
        size_bytes=int(fmt.get("size") or path.stat().st_size),
    )


def has_audio_stream(path: Path) -> bool:
    data = run_ffprobe(path, "-select_streams", "a", "-show_entries", "stream=index")
    return bool(data.get("streams"))


def audio_stream_duration(source: str | Path, what: str) -> tuple[bool, float | None]:
    """Has ``source`` (a file or URL) an audio stream, and how long is it (seconds; None if unknown)?

    ``what`` starts the error when ffprobe cannot read it, e.g. "audio track x.wav: FFmpeg cannot decode it".
    """
    data = run_ffprobe(
        source, "-select_streams", "a:0", "-show_entries", "stream=codec_name,duration:format=duration", what=what
    )
    streams = data.get("streams") or []
    if not streams:
        return False, None
    for raw in (streams[0].get("duration"), (data.get("format") or {}).get("duration")):
        with contextlib.suppress(TypeError, ValueError):
            value = float(raw)
            if value > 0:
                return True, value
    return True, None
