"""Read back the frame index that the test compositions paint as 16 black/white cells."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from helios_pipeline.engine.tools import ffmpeg_path

GRID = 4
SIDE = 64  # decode at 64x64: each cell becomes 16x16 pixels


def decode_gray_frames(video: Path, side: int = SIDE) -> np.ndarray:
    """Every frame of ``video`` as a (frames, side, side) uint8 array."""
    command = [
        ffmpeg_path(), "-v", "error", "-i", str(video),
        "-vf", f"scale={side}:{side}:flags=area,format=gray", "-f", "rawvideo", "-",
    ]  # fmt: skip
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, side, side)


def cell_bits(frame: np.ndarray) -> list[int]:
    cell = frame.shape[0] // GRID
    margin = cell // 4
    bits = []
    for k in range(GRID * GRID):
        row, col = divmod(k, GRID)
        patch = frame[row * cell + margin : (row + 1) * cell - margin, col * cell + margin : (col + 1) * cell - margin]
        bits.append(1 if patch.mean() > 127 else 0)
    return bits


def frame_indices(video: Path) -> list[int]:
    """The index painted into each frame of ``video``, in order."""
    return [sum(bit << k for k, bit in enumerate(cell_bits(frame))) for frame in decode_gray_frames(video)]
