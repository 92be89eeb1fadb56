"""``plan(spec) -> RenderPlan``: the pure, serialisable description of a chunked render.

The plan is the contract between every executor (local processes, Dagster runs, remote
workers): it names each chunk's exact frame range and file, the concat manifest, the mix and
the files to clean up. Nothing here touches the disk.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from helios_pipeline.spec import AudioTrack, RenderSpec

LONG_GOP_CONTAINERS = {"libvpx": ".mkv", "libvpx-vp9": ".mkv", "libaom-av1": ".mkv", "libsvtav1": ".mkv"}


class RenderChunk(BaseModel):
    """One contiguous frame range rendered by one browser into one file."""

    model_config = ConfigDict(frozen=True)

    id: int
    start_frame: int
    frame_count: int
    output_file: Path

    @property
    def end_frame(self) -> int:
        """One past the last frame of the chunk."""
        return self.start_frame + self.frame_count


class MixOptions(BaseModel):
    """What the final pass needs: the explicit tracks, the codec and the exact length."""

    model_config = ConfigDict(frozen=True)

    audio_tracks: tuple[AudioTrack, ...]
    audio_codec: str
    audio_bitrate: str | None
    video_codec: str = "copy"
    total_frames: int
    fps: float
    start_frame: int
    mix_input_audio: bool = False

    @property
    def duration_seconds(self) -> float:
        return self.total_frames / self.fps


class RenderPlan(BaseModel):
    """The seed's RenderPlan, plus the spec it was made from so any worker can render a chunk."""

    model_config = ConfigDict(frozen=True)

    spec: RenderSpec
    total_frames: int
    chunks: tuple[RenderChunk, ...]
    work_dir: Path
    concat_manifest: tuple[Path, ...]
    concat_output_file: Path
    final_output_file: Path
    """Where the final video is written on this machine (for an ``s3://`` output: in the work folder)."""
    final_output_uri: str | None = None
    """The ``s3://`` URI the final video is uploaded to, when the spec's output is remote."""
    mix_options: MixOptions
    cleanup_files: tuple[Path, ...]


def split_frames(start: int, total: int, parts: int) -> list[tuple[int, int]]:
    """Split ``[start, start+total)`` into ``min(parts, total)`` ordered ranges differing by at most one."""
    if total <= 0:
        raise ValueError(f"cannot split {total} frames")
    if parts <= 0:
        raise ValueError(f"cannot split into {parts} chunks")
    count = min(parts, total)
    base, extra = divmod(total, count)
    ranges, cursor = [], start
    for index in range(count):
        size = base + (1 if index < extra else 0)
        ranges.append((cursor, size))
        cursor += size
    return ranges


def chunk_count(spec: RenderSpec, concurrency: int | None = None) -> int:
    """How many chunks a render splits into.

    With ``frames_per_chunk`` the chunk size is fixed (a cluster's unit of work) and ``concurrency``
    only caps how many chunks render at once; without it every parallel worker gets one chunk.
    ``concurrency`` overrides the spec's.
    """
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    if spec.frames_per_chunk is not None:
        return -(-spec.total_frames // spec.frames_per_chunk)
    return spec.concurrency if concurrency is None else concurrency


def chunk_extension(spec: RenderSpec) -> str:
    """Chunk container: MOV (fixed timescale, PCM audio) unless the codec lives in Matroska.

    With ``video_codec: copy`` the in-page WebCodecs stream is kept: H.264 stays in MOV, VP8/VP9/AV1
    go to Matroska.
    """
    if spec.video_codec == "copy":
        intermediate = (spec.intermediate_video_codec or "avc1").lower()
        return ".mov" if intermediate.startswith(("avc", "h264")) else ".mkv"
    return LONG_GOP_CONTAINERS.get(spec.video_codec, ".mov")


def default_work_dir(output: Path) -> Path:
    """A deterministic scratch folder beside the output, so plan() stays pure."""
    return output.parent / f".{output.name}.helios-work"


def _uri_folder(uri: str) -> str:
    """A temp folder name of its own for each output URI: renders to two buckets' ``clip.mp4`` never share files."""
    return f"{hashlib.sha256(uri.encode()).hexdigest()[:12]}-{uri.rsplit('/', 1)[-1]}"


def plan(spec: RenderSpec, *, work_dir: Path | None = None, concurrency: int | None = None) -> RenderPlan:
    """Plan a render: chunk ranges (see ``chunk_count``), their files, the concat and the final mix."""
    output = spec.output_path
    if spec.output_uri is not None and work_dir is None:  # made here, then uploaded: work in the temp folder
        # a folder directly in it, removed with the render (a shared parent stayed behind, empty, and one named
        # like the package shadowed it for Python started in the temp folder)
        work = Path(tempfile.gettempdir()) / f"helios-work-{_uri_folder(spec.output_uri)}"
    else:
        work = Path(work_dir) if work_dir is not None else default_work_dir(output)
    if spec.output_uri is not None:
        output = work / f"final{output.suffix}"
    ext = chunk_extension(spec)
    total = spec.total_frames
    ranges = split_frames(spec.start_frame, total, chunk_count(spec, concurrency))
    chunks = tuple(
        RenderChunk(id=i, start_frame=s, frame_count=n, output_file=work / f"chunk_{i:04d}{ext}")
        for i, (s, n) in enumerate(ranges)
    )
    concat_output = work / f"concat{ext}"
    manifest = tuple(chunk.output_file for chunk in chunks)
    return RenderPlan(
        spec=spec,
        total_frames=total,
        chunks=chunks,
        work_dir=work,
        concat_manifest=manifest,
        concat_output_file=concat_output,
        final_output_file=output,
        final_output_uri=spec.output_uri,
        mix_options=MixOptions(
            audio_tracks=spec.audio_tracks,
            audio_codec=spec.audio_codec,
            audio_bitrate=spec.audio_bitrate,
            total_frames=total,
            fps=spec.fps,
            start_frame=spec.start_frame,
        ),
        cleanup_files=(*manifest, concat_output),
    )
