"""Determinism kit: props before any page script, seeded Math.random, Date.now() from a fixed epoch.

The ``determinism`` composition paints four 16-bit values as cells: the props value its first
<head> script read, a Math.random() value drawn at load, ``Date.now()`` minus 2024-01-01 in ms,
and ``new Date()``'s calendar date. They are decoded from every frame of real renders.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from helios_pipeline.engine.tools import ffmpeg_path
from helios_pipeline.orchestrator import RenderOrchestrator
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import decode_gray_frames

pytestmark = pytest.mark.slow

FPS = 30
FRAMES = 45
EPOCH_MS = 1704067200000  # 2024-01-01T00:00:00Z
PROPS_CODE = 0xA5C3
SEED = 1234
CALENDAR_2024_01_01 = 24 | (1 << 6) | (1 << 10)
GRID = 8


def decode_values(video: Path) -> np.ndarray:
    """(frames, 4) array: the four 16-bit values painted into each frame."""
    frames = decode_gray_frames(video, side=GRID * 8)  # 8x8 pixels per cell
    cells = frames.reshape(-1, GRID, 8, GRID, 8)[:, :, 2:6, :, 2:6].mean(axis=(2, 4)) > 127  # centre of each cell
    bits = cells.reshape(-1, 4, 16).astype(np.int64)
    return (bits << np.arange(16)).sum(axis=2)


def framemd5(video: Path) -> list[str]:
    """One checksum per decoded frame (FFmpeg's framemd5 muxer, header comments dropped)."""
    command = [ffmpeg_path(), "-v", "error", "-i", str(video), "-map", "0:v", "-f", "framemd5", "-"]
    lines = subprocess.run(command, capture_output=True, check=True, text=True).stdout.splitlines()
    return [line for line in lines if not line.startswith("#")]


def expected_date_ms(frame: int) -> int:
    """floor(Date.now() - epoch) at frame n: the driver's t = n * 1000 / fps, in the page's double arithmetic."""
    return math.floor((EPOCH_MS + frame * 1000 / FPS) - EPOCH_MS)


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Render the determinism page once per distinct set of options (renders are shared by tests)."""
    folder = tmp_path_factory.mktemp("determinism")
    done: dict[str, Path] = {}

    def run(name: str, **options: object) -> Path:
        if name not in done:
            output = folder / f"{name}.mp4"
            RenderOrchestrator.render(
                str(COMPOSITIONS / "determinism"), output, width=256, height=256, fps=FPS, frame_count=FRAMES,
                **options,
            )  # fmt: skip
            done[name] = output
        return done[name]

    return run


def _chunked(render: Callable[..., Path], name: str = "chunked") -> Path:
    return render(name, concurrency=3, random_seed=SEED, input_props={"code": PROPS_CODE})


def test_page_values_are_the_promised_ones(render: Callable[..., Path]) -> None:
    values = decode_values(_chunked(render))
    assert values.shape == (FRAMES, 4)
    # input_props were there when the first <head> script ran, in every chunk
    assert values[:, 0].tolist() == [PROPS_CODE] * FRAMES
    # Math.random() at load: one value, the same in every chunk (each chunk loads the page afresh)
    assert len(set(values[:, 1].tolist())) == 1
    # Date.now() is 2024-01-01T00:00:00Z exactly at frame 0 and moves by 1000/fps ms per frame
    assert values[:, 2].tolist() == [expected_date_ms(n) for n in range(FRAMES)]
    assert values[0, 2] == 0
    # new Date() reads the same virtual clock
    assert values[:, 3].tolist() == [CALENDAR_2024_01_01] * FRAMES


def test_renders_identically_twice(render: Callable[..., Path]) -> None:
    first, second = framemd5(_chunked(render)), framemd5(_chunked(render, "chunked_again"))
    assert len(first) == len(second) == FRAMES
    differing = [n for n, (a, b) in enumerate(zip(first, second, strict=True)) if a != b]
    assert differing == [], f"decoded frames differ between two identical renders: {differing}"


def test_one_chunk_and_three_chunks_paint_the_same(render: Callable[..., Path]) -> None:
    single = render("single", concurrency=1, random_seed=SEED, input_props={"code": PROPS_CODE})
    assert np.array_equal(decode_values(single), decode_values(_chunked(render)))
    # and the pictures agree beyond the painted bits (only codec noise differs with the GOP layout)
    a = decode_gray_frames(single, side=256).astype(np.int16)
    b = decode_gray_frames(_chunked(render), side=256).astype(np.int16)
    assert np.abs(a - b).mean() < 1.0


def test_random_seed_changes_the_random_values_only(render: Callable[..., Path]) -> None:
    seeded = decode_values(_chunked(render))
    other = decode_values(render("other_seed", concurrency=3, random_seed=SEED + 1, input_props={"code": PROPS_CODE}))
    assert len(set(other[:, 1].tolist())) == 1
    assert other[0, 1] != seeded[0, 1]
    assert np.array_equal(np.delete(other, 1, axis=1), np.delete(seeded, 1, axis=1))


def test_without_props_the_page_sees_an_empty_object(render: Callable[..., Path]) -> None:
    values = decode_values(render("no_props", concurrency=1, random_seed=SEED))
    assert values[:, 0].tolist() == [0xFFFF] * FRAMES  # 0 would mean no window.__HELIOS_PROPS__
    assert values[0, 1] == decode_values(_chunked(render))[0, 1]  # props do not move the random sequence
