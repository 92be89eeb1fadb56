"""A full disk (issue 9), where the engine and the storage write: ENOSPC becomes an error that says
"no space left on device writing <path>", and nothing half-written is left on the volume.

The volume is a small tmpfs filled up to its last 16 KiB (helpers.nearly_full_volume; needs root).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from helios_pipeline.engine.audio.mix import mix_final
from helios_pipeline.engine.chunk import render_chunk
from helios_pipeline.engine.errors import NoSpaceError
from helios_pipeline.plan import MixOptions, plan
from helios_pipeline.spec import RenderSpec
from helios_pipeline.storage import StorageFullError, open_store
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.helpers import nearly_full_volume

FRAMES = 60


def left_on(volume: Path) -> list[str]:
    """What is on the volume besides the filler."""
    return sorted(str(path.relative_to(volume)) for path in volume.rglob("*") if path.name != "filler")


def no_space_writing(folder: Path) -> str:
    return rf"no space left on device writing {re.escape(str(folder))}/"


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seconds of noise-like test pattern: far more than 16 KiB."""
    path = tmp_path_factory.mktemp("disk_full") / "video.mov"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
         "-frames:v", str(FRAMES), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    assert path.stat().st_size > 64 * 1024
    return path


def test_ffmpeg_output_on_a_full_disk_names_the_file_and_is_removed(video: Path, tmp_path: Path) -> None:
    with nearly_full_volume(tmp_path / "volume") as volume:
        output = volume / "final.mp4"
        options = MixOptions(audio_tracks=(), audio_codec="aac", audio_bitrate=None, total_frames=FRAMES, fps=30,
                             start_frame=0)  # fmt: skip
        with pytest.raises(NoSpaceError, match=rf"final mix of {re.escape(str(output))} failed: .*") as caught:
            mix_final(options, video, output)
        assert re.search(no_space_writing(volume), str(caught.value)), caught.value
        assert "\n" not in str(caught.value), "the cause, not FFmpeg's muxer messages"
        assert left_on(volume) == []


def test_publishing_to_a_full_storage_names_the_file_and_leaves_no_temporary(video: Path, tmp_path: Path) -> None:
    with nearly_full_volume(tmp_path / "storage") as root:
        store = open_store(str(root))
        target = root / "renders" / "r" / "chunk_0000.mov"
        with pytest.raises(StorageFullError, match=rf"no space left on device writing {re.escape(str(target))}$"):
            store.publish(video, "renders/r/chunk_0000.mov")
        record = root / "renders" / "r" / "progress" / "000.json"
        with pytest.raises(StorageFullError, match=rf"no space left on device writing {re.escape(str(record))}$"):
            store.write_bytes("renders/r/progress/000.json", os.urandom(64 * 1024))
        assert [path for path in left_on(root) if not (root / path).is_dir()] == []


def test_fetching_onto_a_full_disk_names_the_file_and_leaves_no_partial_copy(video: Path, tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "storage"))
    store.publish(video, "renders/r/chunk_0000.mov")
    with nearly_full_volume(tmp_path / "work") as work:
        local = work / "chunk_0000.mov"
        with pytest.raises(StorageFullError, match=rf"no space left on device writing {re.escape(str(local))}$"):
            store.fetch("renders/r/chunk_0000.mov", local)
        assert left_on(work) == []


def test_downloading_from_s3_onto_a_full_disk_names_the_file(
    video: Path, tmp_path: Path, s3_bucket: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket, env = s3_bucket
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HELIOS_CACHE", str(tmp_path / "cache"))
    store = open_store(f"s3://{bucket}/renders-here")
    info = store.publish(video, "renders/r/chunk_0000.mov")
    with nearly_full_volume(tmp_path / "work") as work:
        local = work / "chunk_0000.mov"
        with pytest.raises(StorageFullError, match=rf"no space left on device writing {re.escape(str(local))}$"):
            store.fetch("renders/r/chunk_0000.mov", local, info)
        assert left_on(work) == []


def test_a_chunk_whose_own_files_do_not_fit_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    """The chunk's subtitle file (written by Python, not FFmpeg) on a full volume: the chunk names the cause."""
    cues = "".join(
        f"{n}\n00:00:00,000 --> 00:00:00,300\ncue number {n} of many, long enough to fill\n\n" for n in range(1, 600)
    )
    (tmp_path / "subs.srt").write_text(cues, encoding="utf-8")
    with nearly_full_volume(tmp_path / "volume") as volume:
        spec = RenderSpec(
            composition=str(COMPOSITIONS / "frame_raf" / "index.html"), width=64, height=64, fps=30, frame_count=10,
            subtitles=str(tmp_path / "subs.srt"), output=str(volume / "out.mp4"),
        )  # fmt: skip
        chunk = plan(spec).chunks[0]
        with pytest.raises(NoSpaceError, match=rf"chunk 0: {no_space_writing(volume)}"):
            render_chunk(spec, chunk)
        assert [path for path in left_on(volume) if not (volume / path).is_dir()] == []


def test_the_render_summary_reads_a_chunk_error_under_dagster_retry_wrapper(tmp_path: Path) -> None:
    """After its retries a step fails with "Exceeded max_retries": the summary must give the chunk's own error."""
    import dagster as dg

    from helios_pipeline.dagster_defs.runner import _failed_run_message

    @dg.op(retry_policy=dg.RetryPolicy(max_retries=1))
    def writes_a_chunk() -> None:
        raise OSError(28, "No space left on device")

    @dg.job
    def chunk_job() -> None:
        writes_a_chunk()

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = chunk_job.execute_in_process(
            instance=instance, raise_on_error=False, tags={"dagster/partition/chunk": "001"}
        )
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        assert run is not None
        assert _failed_run_message(instance, run) == "chunk 001: OSError: [Errno 28] No space left on device"
