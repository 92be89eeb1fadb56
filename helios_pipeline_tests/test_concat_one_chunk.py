"""A one-chunk render's concat is the chunk itself: no second FFmpeg pass, the same guards."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helios_pipeline.engine.concat import concat_chunks
from helios_pipeline.engine.encode import timescale_args
from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.tools import ffmpeg_path


def _chunk(folder: Path, frames: int) -> Path:
    """A chunk file as the chunk encoder writes one (fixed timescales, no metadata)."""
    chunk = folder / "chunk_0000.mov"
    subprocess.run(
        [ffmpeg_path(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x64:rate=30", "-frames:v", str(frames),
         "-c:v", "libx264", *timescale_args(30, chunk), "-map_metadata", "-1", str(chunk)],
        check=True,
    )  # fmt: skip
    return chunk


def test_one_chunk_is_taken_as_it_is(tmp_path: Path) -> None:
    chunk = _chunk(tmp_path, 10)
    result = concat_chunks([chunk], tmp_path / "concat.mov", fps=30, expected_frames=10)
    assert (result.frames, result.chunks) == (10, 1)
    assert (tmp_path / "concat.mov").read_bytes() == chunk.read_bytes()  # not remuxed
    assert chunk.is_file()


def test_one_chunk_with_the_wrong_frame_count_is_refused(tmp_path: Path) -> None:
    chunk = _chunk(tmp_path, 9)
    with pytest.raises(RenderError, match="holds 9 frames, the plan has 10"):
        concat_chunks([chunk], tmp_path / "concat.mov", fps=30, expected_frames=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk_0000.mov"]
