"""Join chunk files by stream copy with FFmpeg's concat demuxer, and prove the frame count."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from helios_pipeline.engine.encode import fps_fraction, timescale_args
from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.ffmpeg import ffmpeg_command, run_ffmpeg
from helios_pipeline.engine.fileio import atomic_output
from helios_pipeline.engine.probe import probe


@dataclass(frozen=True)
class ConcatResult:
    output_file: str
    seconds: float
    bytes: int
    frames: int
    chunks: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _manifest_line(path: Path) -> str:
    escaped = str(path.resolve()).replace("'", "'\\''")
    return f"file '{escaped}'\n"


def concat_chunks(chunk_files: list[Path], output: Path, *, fps: float, expected_frames: int) -> ConcatResult:
    """Concatenate ``chunk_files`` in order into ``output`` without re-encoding (one chunk: no
    FFmpeg run, see ``_same_file``).

    Fails (and writes nothing) when a chunk is missing or the result does not hold exactly
    ``expected_frames`` frames.
    """
    started = time.perf_counter()
    missing = [str(path) for path in chunk_files if not Path(path).is_file()]
    if missing:
        raise RenderError(f"cannot concatenate: missing chunk files: {', '.join(missing)}")
    with atomic_output(output) as partial:
        if len(chunk_files) == 1 and Path(chunk_files[0]).suffix == output.suffix:
            _same_file(Path(chunk_files[0]), partial)
        else:
            _concat_demux(chunk_files, partial, fps, output)
        frames = probe(partial).video_frames  # the same probe then serves the output's metadata
        if frames != expected_frames:
            raise RenderError(f"concat into {output} holds {frames} frames, the plan has {expected_frames}")
        size = partial.stat().st_size
    return ConcatResult(
        output_file=str(output),
        seconds=time.perf_counter() - started,
        bytes=size,
        frames=frames,
        chunks=len(chunk_files),
    )


def _concat_demux(chunk_files: list[Path], partial: Path, fps: float, output: Path) -> None:
    manifest = partial.with_suffix(".txt")
    manifest.write_text("ffconcat version 1.0\n" + "".join(_manifest_line(Path(p)) for p in chunk_files))
    try:
        command = ffmpeg_command(
            "-f", "concat", "-safe", "0", "-r", str(fps_fraction(fps)), "-i", str(manifest),
            "-map", "0", "-c", "copy", *timescale_args(fps, output),
            "-map_metadata", "-1", str(partial),
        )  # fmt: skip
        run_ffmpeg(command, f"concat into {output}")
    finally:
        manifest.unlink(missing_ok=True)


def _same_file(chunk: Path, partial: Path) -> None:
    """A one-chunk render: the chunk already is the joined stream (same container, timescale and
    settings as the concat would write), so it is copied (a copy, not a link: chunk files may be
    the storage's own) instead of remuxed by a second FFmpeg."""
    shutil.copyfile(chunk, partial)
