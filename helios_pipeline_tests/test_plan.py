"""Properties of the frame arithmetic and of plan(spec): exact, ordered, balanced, pure, serialisable."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helios_pipeline.plan import RenderPlan, chunk_count, default_work_dir, plan, split_frames
from helios_pipeline.spec import RenderSpec, frames_for_duration, validate_spec

COMMON_RATES = (23.976, 24, 25, 29.97, 30, 50, 59.94, 60)


def assert_exact_cover(ranges: list[tuple[int, int]], start: int, total: int, parts: int) -> None:
    assert len(ranges) == min(parts, total)
    cursor = start
    for chunk_start, size in ranges:
        assert isinstance(chunk_start, int) and isinstance(size, int)
        assert chunk_start == cursor, "chunks must be contiguous and in order (no gap, no overlap)"
        assert size > 0, "no empty chunk"
        cursor += size
    assert cursor == start + total
    sizes = [size for _, size in ranges]
    assert max(sizes) - min(sizes) <= 1


# --- split_frames ---------------------------------------------------------------------------------


@given(
    start=st.integers(min_value=0, max_value=10**7),
    total=st.integers(min_value=1, max_value=10**6),
    parts=st.integers(min_value=1, max_value=512),
)
def test_split_frames_covers_the_range_exactly(start: int, total: int, parts: int) -> None:
    assert_exact_cover(split_frames(start, total, parts), start, total, parts)


def test_split_frames_matches_the_seed_example() -> None:
    # Helios's verify-orchestrator-plan: 300 frames at concurrency 4 -> 4 x 75.
    assert split_frames(0, 300, 4) == [(0, 75), (75, 75), (150, 75), (225, 75)]
    assert split_frames(10, 7, 3) == [(10, 3), (13, 2), (15, 2)]
    assert split_frames(5, 2, 8) == [(5, 1), (6, 1)]


@pytest.mark.parametrize(("total", "parts"), [(0, 1), (-3, 2), (5, 0), (5, -1)])
def test_split_frames_rejects_empty_input(total: int, parts: int) -> None:
    with pytest.raises(ValueError):
        split_frames(0, total, parts)


# --- frames_for_duration --------------------------------------------------------------------------


def test_frames_for_duration_examples_are_exact_integers() -> None:
    # 4.1 * 30 == 122.99999999999999 in binary floating point: still 123 frames.
    assert frames_for_duration(4.1, 30) == 123
    assert type(frames_for_duration(4.1, 30)) is int
    # Products that are not whole frames round up (the render covers at least the duration).
    assert frames_for_duration(2.5, 29.97) == 75
    assert type(frames_for_duration(2.5, 29.97)) is int
    assert frames_for_duration(2.2, 24) == 53
    assert type(frames_for_duration(2.2, 24)) is int
    assert frames_for_duration(10, 23.976) == 240
    assert frames_for_duration(1 / 3, 30) == 10


@given(n=st.integers(min_value=1, max_value=10**7), fps=st.sampled_from(COMMON_RATES))
def test_frames_for_duration_inverts_frames_over_fps(n: int, fps: float) -> None:
    frames = frames_for_duration(n / fps, fps)
    assert type(frames) is int
    assert frames == n


@given(
    duration=st.floats(min_value=1e-3, max_value=1e5, allow_nan=False, allow_infinity=False),
    fps=st.sampled_from(COMMON_RATES),
)
def test_frames_for_duration_is_never_short_and_never_a_frame_long(duration: float, fps: float) -> None:
    frames = frames_for_duration(duration, fps)
    assert type(frames) is int
    exact = duration * fps
    # Covers the duration (up to float noise), and never adds a whole extra frame.
    assert frames >= exact - 1e-6
    assert frames < exact + 1
    assert frames == math.ceil(exact) or math.isclose(frames, exact, abs_tol=1e-6)


# --- plan(spec) -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a composition, an audio file and nothing else."""
    folder = tmp_path_factory.mktemp("plan_project")
    (folder / "site").mkdir()
    (folder / "site" / "index.html").write_text("<!doctype html><title>plan</title>", encoding="utf-8")
    (folder / "music.wav").write_bytes(b"RIFF")
    return folder


def snapshot(folder: Path) -> set[str]:
    return {str(Path(root, name)) for root, dirs, files in os.walk(folder) for name in dirs + files}


def make_spec(project: Path, **keys: object) -> RenderSpec:
    data = {"name": "promo", "composition": "site", "width": 64, "height": 36, "fps": 30, **keys}
    return validate_spec(data, base_dir=project, source=str(project / "spec.yaml"))


specs = st.fixed_dictionaries(
    {
        "start_frame": st.integers(min_value=0, max_value=100_000),
        "frame_count": st.integers(min_value=1, max_value=100_000),
        "concurrency": st.integers(min_value=1, max_value=64),
        "fps": st.sampled_from(COMMON_RATES),
        "video_codec": st.sampled_from(["libx264", "libx265", "libvpx-vp9", "prores_ks"]),
    }
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150)
@given(keys=specs, override=st.none() | st.integers(min_value=1, max_value=64))
def test_plan_properties(project: Path, keys: dict, override: int | None) -> None:
    container = ".mov" if keys["video_codec"] == "prores_ks" else ".mp4"  # ProRes does not go into MP4
    spec = make_spec(project, audio_tracks=["music.wav"], output=f"out/promo{container}", **keys)
    before = snapshot(project)

    render_plan = plan(spec, concurrency=override)

    # Pure: nothing created, nothing removed.
    assert snapshot(project) == before
    assert not render_plan.work_dir.exists()

    concurrency = override or keys["concurrency"]
    total = keys["frame_count"]
    assert render_plan.total_frames == total
    ranges = [(chunk.start_frame, chunk.frame_count) for chunk in render_plan.chunks]
    assert_exact_cover(ranges, keys["start_frame"], total, concurrency)
    assert [chunk.id for chunk in render_plan.chunks] == list(range(len(render_plan.chunks)))
    assert all(chunk.end_frame == chunk.start_frame + chunk.frame_count for chunk in render_plan.chunks)

    files = [chunk.output_file for chunk in render_plan.chunks]
    assert len(set(files)) == len(files), "chunk files must be unique"
    assert all(path.parent == render_plan.work_dir for path in files)
    assert render_plan.work_dir == default_work_dir(spec.output_path)
    assert render_plan.work_dir.parent == spec.output_path.parent
    assert list(render_plan.concat_manifest) == files
    assert render_plan.concat_output_file.parent == render_plan.work_dir
    assert render_plan.concat_output_file not in files
    assert render_plan.final_output_file == spec.output_path == project / "out" / f"promo{container}"
    assert set(render_plan.cleanup_files) == {*files, render_plan.concat_output_file}
    assert render_plan.final_output_file not in render_plan.cleanup_files
    # Chunks of one render share one container suited to stream-copy concat.
    assert len({path.suffix for path in files} | {render_plan.concat_output_file.suffix}) == 1

    mix = render_plan.mix_options
    assert mix.total_frames == total
    assert mix.fps == spec.fps
    assert mix.start_frame == keys["start_frame"]
    assert mix.video_codec == "copy"
    assert mix.audio_tracks == spec.audio_tracks
    assert mix.duration_seconds == pytest.approx(total / spec.fps)

    # JSON-serialisable and round-trips to an equal plan.
    text = render_plan.model_dump_json()
    assert RenderPlan.model_validate_json(text) == render_plan
    assert snapshot(project) == before


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(
    duration=st.floats(min_value=0.01, max_value=600, allow_nan=False, allow_infinity=False),
    fps=st.sampled_from(COMMON_RATES),
    concurrency=st.integers(min_value=1, max_value=16),
)
def test_plan_from_duration_uses_one_integer_frame_count(
    project: Path, duration: float, fps: float, concurrency: int
) -> None:
    spec = make_spec(project, fps=fps, duration_in_seconds=duration, concurrency=concurrency)
    render_plan = plan(spec)
    assert type(render_plan.total_frames) is int
    assert render_plan.total_frames == frames_for_duration(duration, fps) == spec.total_frames
    assert sum(chunk.frame_count for chunk in render_plan.chunks) == render_plan.total_frames
    assert all(type(chunk.frame_count) is int for chunk in render_plan.chunks)


def test_plan_seed_example(project: Path) -> None:
    """10 s at 30 fps over 4 chunks: 4 x 75 frames in .mov files, 5 cleanup files (as in Helios)."""
    render_plan = plan(make_spec(project, duration_in_seconds=10, concurrency=4))
    assert render_plan.total_frames == 300
    assert [(c.start_frame, c.frame_count) for c in render_plan.chunks] == [(0, 75), (75, 75), (150, 75), (225, 75)]
    assert all(c.output_file.suffix == ".mov" for c in render_plan.chunks)
    assert len(render_plan.cleanup_files) == 5


def test_plan_honours_explicit_work_dir_and_rejects_zero_concurrency(project: Path, tmp_path: Path) -> None:
    spec = make_spec(project, frame_count=10, concurrency=2)
    render_plan = plan(spec, work_dir=tmp_path / "scratch")
    assert all(c.output_file.parent == tmp_path / "scratch" for c in render_plan.chunks)
    assert not (tmp_path / "scratch").exists()
    with pytest.raises(ValueError):
        plan(spec, concurrency=0)


# --- frames_per_chunk -----------------------------------------------------------------------------


def test_plan_frames_per_chunk_issue_example(project: Path) -> None:
    """18,000 frames at 240 frames per chunk: 75 chunks of 240, whatever the concurrency."""
    spec = make_spec(project, frame_count=18_000, frames_per_chunk=240, concurrency=8)
    render_plan = plan(spec)
    assert len(render_plan.chunks) == 75
    assert {chunk.frame_count for chunk in render_plan.chunks} == {240}
    assert render_plan.chunks[-1].end_frame == 18_000
    assert plan(spec, concurrency=3).chunks == render_plan.chunks, "concurrency no longer picks the chunk count"


def test_plan_frames_per_chunk_balances_a_remainder(project: Path) -> None:
    # 10 frames at most 4 per chunk: 3 chunks of 4, 3, 3 (not 4, 4, 2).
    render_plan = plan(make_spec(project, frame_count=10, start_frame=5, frames_per_chunk=4))
    assert [(c.start_frame, c.frame_count) for c in render_plan.chunks] == [(5, 4), (9, 3), (12, 3)]
    # More frames per chunk than the render has: one chunk.
    assert len(plan(make_spec(project, frame_count=10, frames_per_chunk=500)).chunks) == 1


@st.composite
def chunked_ranges(draw: st.DrawFn) -> tuple[int, int, int]:
    """A start frame, a total and a chunk size giving at most 400 chunks (big plans are slow to build)."""
    per_chunk = draw(st.integers(min_value=1, max_value=5_000))
    total = draw(st.integers(min_value=1, max_value=min(100_000, 400 * per_chunk)))
    return draw(st.integers(min_value=0, max_value=100_000)), total, per_chunk


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150)
@given(ranges=chunked_ranges(), concurrency=st.integers(min_value=1, max_value=64))
def test_plan_frames_per_chunk_properties(project: Path, ranges: tuple[int, int, int], concurrency: int) -> None:
    start, total, per_chunk = ranges
    spec = make_spec(project, start_frame=start, frame_count=total, frames_per_chunk=per_chunk, concurrency=concurrency)
    render_plan = plan(spec)
    expected = math.ceil(total / per_chunk)
    assert chunk_count(spec) == expected
    ranges = [(chunk.start_frame, chunk.frame_count) for chunk in render_plan.chunks]
    assert_exact_cover(ranges, start, total, expected)  # ordered, contiguous, sizes differ by at most one
    assert max(size for _, size in ranges) <= per_chunk
    assert RenderPlan.model_validate_json(render_plan.model_dump_json()) == render_plan


def test_without_frames_per_chunk_the_chunk_count_is_the_concurrency(project: Path) -> None:
    spec = make_spec(project, frame_count=100, concurrency=6)
    assert chunk_count(spec) == 6 and chunk_count(spec, 2) == 2
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        chunk_count(make_spec(project, frame_count=100, frames_per_chunk=10), 0)
