"""ffprobe once per file content: a render's last run probes its output for the mix, the metadata and the
check; each ffprobe costs ~50 ms on the render's critical path. A changed or replaced file must be read again."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helios_pipeline.engine import probe as probe_mod
from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.probe import probe
from helios_pipeline.engine.tools import ffmpeg_path


def write_video(path: Path, frames: int) -> Path:
    subprocess.run(
        [ffmpeg_path(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=64x64:r=30", "-frames:v", str(frames),
         "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    return path


@pytest.fixture
def ffprobe_runs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files ffprobe really read during the test (the cache starts empty)."""
    probe_mod._probe_content.cache_clear()
    runs: list[Path] = []
    real = probe_mod.run_ffprobe
    monkeypatch.setattr(
        probe_mod, "run_ffprobe", lambda target, *args, **kw: runs.append(target) or real(target, *args, **kw)
    )
    return runs


def test_one_file_is_probed_once_under_any_name_it_is_renamed_to(tmp_path: Path, ffprobe_runs: list[Path]) -> None:
    partial = write_video(tmp_path / ".out.mp4.partial.mp4", 12)
    assert probe(partial).video_frames == 12
    final = tmp_path / "out.mp4"
    partial.rename(final)  # what atomic_output does: the probe of the temporary name serves the final one
    info = probe(final)
    assert (info.path, info.video_frames, info.width) == (final, 12, 64)
    assert probe(final).video_frames == 12
    assert ffprobe_runs == [partial]


def test_a_rewritten_or_replaced_file_is_probed_again(tmp_path: Path, ffprobe_runs: list[Path]) -> None:
    video = write_video(tmp_path / "out.mp4", 12)
    assert probe(video).video_frames == 12
    write_video(tmp_path / "other.mp4", 30).replace(video)  # a re-render's output takes the name
    assert probe(video).video_frames == 30
    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # same bytes, touched: read again
    assert probe(video).video_frames == 30
    assert len(ffprobe_runs) == 3


def test_a_missing_or_unreadable_file_is_an_error_each_time(tmp_path: Path, ffprobe_runs: list[Path]) -> None:
    missing = tmp_path / "gone.mp4"
    with pytest.raises(RenderError, match=r"gone\.mp4"):
        probe(missing)
    garbage = tmp_path / "notes.mp4"
    garbage.write_text("not a video", encoding="utf-8")
    for _ in range(2):
        with pytest.raises(RenderError, match=r"notes\.mp4"):
            probe(garbage)
    assert ffprobe_runs == [missing, garbage, garbage], "a failure is not remembered"
