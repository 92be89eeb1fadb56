"""Chunk compatibility: encoder settings read from real encoded chunks, and the check that names the culprits."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from helios_pipeline.engine.audio.page_audio import mux_audio
from helios_pipeline.engine.chunk import ChunkResult
from helios_pipeline.engine.chunk_compat import ChunkFacts, check_chunks_compatible, probe_chunk
from helios_pipeline.engine.encode import ChunkEncoder, chunk_encode_command
from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.tools import ffmpeg_path
from helios_pipeline.orchestrator import InProcessExecutor, RenderOrchestrator
from helios_pipeline.plan import RenderChunk, default_work_dir
from helios_pipeline.spec import RenderSpec, validate_spec
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import frame_indices

SIDE = 64


def jpeg_frames(count: int, size: str = f"{SIDE}x{SIDE}") -> list[bytes]:
    """``count`` distinct JPEG pictures from FFmpeg's test source, split at their end-of-image markers."""
    command = [
        ffmpeg_path(), "-v", "error", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=30",
        "-frames:v", str(count), "-c:v", "mjpeg", "-f", "image2pipe", "-",
    ]  # fmt: skip
    data = subprocess.run(command, capture_output=True, check=True).stdout
    frames = [part + b"\xff\xd9" for part in data.split(b"\xff\xd9") if part]
    assert len(frames) == count
    return frames


def encode_chunk(tmp_path: Path, name: str, frames: int, **spec_keys: object) -> Path:
    """Encode ``frames`` pictures with the engine's own chunk encoder, as a worker would."""
    data = {"composition": "http://127.0.0.1/", "width": SIDE, "height": SIDE, "fps": 30, "frame_count": frames}
    spec: RenderSpec = validate_spec({**data, **spec_keys}, base_dir=tmp_path, source="test")
    output = tmp_path / f"{name}.mov"
    encoder = ChunkEncoder(chunk_encode_command(spec, frames, output))
    for frame in jpeg_frames(frames):
        encoder.write(frame)
    encoder.finish()
    return output


def facts(chunk_id: int, path: Path, worker: str, host: str) -> ChunkFacts:
    return ChunkFacts(chunk_id=chunk_id, worker=worker, host=host, encoder_settings=probe_chunk(path).encoder_settings)


def test_chunks_of_one_render_pass_whatever_their_lengths(tmp_path: Path) -> None:
    paths = [encode_chunk(tmp_path, f"c{n}", n) for n in (8, 7, 1)]
    probes = [probe_chunk(path) for path in paths]
    assert [probe.frames for probe in probes] == [8, 7, 1]
    settings = probes[0].encoder_settings
    assert settings["video.codec_name"] == "h264" and settings["video.pix_fmt"] == "yuv420p"
    assert (settings["video.width"], settings["video.height"], settings["video.r_frame_rate"]) == ("64", "64", "30/1")
    assert settings["video.has_b_frames"] == "0" and settings["audio"] == "none"
    assert re.fullmatch(r"[0-9a-f]{16}", settings["video.parameter_sets"])
    check_chunks_compatible([facts(i, path, f"w{i}", "host-a") for i, path in enumerate(paths)])


def test_hevc_chunks_of_different_lengths_pass(tmp_path: Path) -> None:
    """x265 writes its options (with the chunk's own keyint) into an SEI of the hvcC: only VPS/SPS/PPS count."""
    paths = [encode_chunk(tmp_path, f"h{n}", n, video_codec="libx265", preset="ultrafast") for n in (9, 8)]
    assert probe_chunk(paths[0]).encoder_settings["video.codec_name"] == "hevc"
    check_chunks_compatible([facts(i, path, f"w{i}", "h") for i, path in enumerate(paths)])


def test_different_pixel_formats_are_refused_naming_both_workers(tmp_path: Path) -> None:
    first = encode_chunk(tmp_path, "a", 6)
    second = encode_chunk(tmp_path, "b", 6, pixel_format="yuv444p")
    with pytest.raises(RenderError) as caught:
        check_chunks_compatible([facts(0, first, "worker-1", "vm-a"), facts(1, second, "worker-2", "vm-b")])
    message = str(caught.value)
    assert "chunk 0 (worker worker-1 on vm-a)" in message and "chunk 1 (worker worker-2 on vm-b)" in message
    assert "video.pix_fmt: yuv420p vs yuv444p" in message
    assert "video.profile: High vs High 4:4:4 Predictive" in message


def test_an_encoder_that_writes_other_parameter_sets_is_caught(tmp_path: Path) -> None:
    """Same codec, size, format and rate, but x264 configured otherwise (as another build might): only
    the SPS/PPS in the codec private data tell them apart."""
    first = encode_chunk(tmp_path, "a", 6, preset="medium")
    second = encode_chunk(tmp_path, "b", 6, preset="ultrafast")  # CAVLC instead of CABAC, among others
    a, b = probe_chunk(first).encoder_settings, probe_chunk(second).encoder_settings
    assert a["video.pix_fmt"] == b["video.pix_fmt"] and a["video.codec_name"] == b["video.codec_name"]
    with pytest.raises(
        RenderError, match=r"chunk 0 .* and chunk 3 .*video\.parameter_sets: [0-9a-f]{16} vs [0-9a-f]{16}"
    ):
        check_chunks_compatible([facts(0, first, "w0", "h"), facts(3, second, "w3", "h"), facts(4, first, "w4", "h")])


def test_a_chunk_with_pcm_audio_differs_from_one_without(tmp_path: Path) -> None:
    video = encode_chunk(tmp_path, "a", 6)
    with_audio = encode_chunk(tmp_path, "b", 6)
    wav = tmp_path / "tone.wav"
    subprocess.run(
        [ffmpeg_path(), "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=0.2",
         "-c:a", "pcm_s16le", str(wav)],
        check=True,
    )  # fmt: skip
    mux_audio(with_audio, wav, 30)
    settings = probe_chunk(with_audio).encoder_settings
    assert (settings["audio.codec_name"], settings["audio.sample_rate"]) == ("pcm_s16le", "48000")
    with pytest.raises(RenderError, match=r"audio: none vs absent.*audio\.codec_name: absent vs pcm_s16le"):
        check_chunks_compatible([facts(0, video, "w0", "h"), facts(1, with_audio, "w1", "h")])


@pytest.mark.slow
def test_rendered_chunks_record_versions_and_matching_settings(tmp_path: Path) -> None:
    """A real render: 7 frames in chunks of 2, 2, 2, 1; every chunk names its Chromium and FFmpeg."""
    output = tmp_path / "out.mp4"
    result = RenderOrchestrator.render(
        str(COMPOSITIONS / "frame_css"), output, width=256, height=256, fps=30, frame_count=7, frames_per_chunk=2,
        concurrency=2,
    )  # fmt: skip
    assert frame_indices(output) == list(range(7))
    assert [chunk.frame_count for chunk in result.chunks] == [2, 2, 2, 1]
    for chunk in result.chunks:
        assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", chunk.chromium_version), chunk.chromium_version
        assert chunk.ffmpeg_version.startswith("ffmpeg version "), chunk.ffmpeg_version
        assert chunk.encoder_settings["video.width"] == "256"
    check_chunks_compatible([ChunkFacts(c.chunk_id, f"pid {c.pid}", c.host, c.encoder_settings) for c in result.chunks])


class MismatchedWorker:
    """Renders chunk 1 with another pixel format, as a worker with another configuration would."""

    def __init__(self) -> None:
        self.inner = InProcessExecutor()

    def render(self, spec: RenderSpec, chunk: RenderChunk, *, on_progress, cancel) -> ChunkResult:
        if chunk.id == 1:
            spec = spec.model_copy(update={"pixel_format": "yuv444p"})
        return self.inner.render(spec, chunk, on_progress=on_progress, cancel=cancel)


@pytest.mark.slow
def test_the_library_orchestrator_refuses_to_join_mismatched_chunks(tmp_path: Path) -> None:
    """Without the check the concat copies a yuv444p chunk into a yuv420p stream."""
    output = tmp_path / "out" / "video.mp4"
    output.parent.mkdir()
    with pytest.raises(
        RenderError, match=r"cannot join chunk 0 \(worker pid \d+ on .+\) and chunk 1 .*yuv420p vs yuv444p"
    ):
        RenderOrchestrator.render(
            str(COMPOSITIONS / "frame_css"), output, width=128, height=128, fps=30, frame_count=6, concurrency=2,
            executor=MismatchedWorker(),
        )  # fmt: skip
    assert not output.exists() and not default_work_dir(output).exists()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to compare with one")
def test_a_chunk_encodes_to_the_same_bits_whatever_cpus_its_worker_has(tmp_path: Path) -> None:
    """x264 left to itself runs 1.5 threads per CPU it may use, and the thread count changes the bits: a render
    scaled out over workers of different sizes would not be reproducible."""
    spec = validate_spec(
        {"composition": "http://127.0.0.1/", "width": 640, "height": 360, "fps": 30, "frame_count": 30},
        base_dir=tmp_path,
        source="test",
    )
    frames = b"".join(jpeg_frames(30, "640x360"))

    def encoded_with(cpus: set[int], name: str) -> str:
        output = tmp_path / f"{name}.mov"
        subprocess.run(
            chunk_encode_command(spec, 30, output),
            input=frames,
            check=True,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
        stream = [ffmpeg_path(), "-v", "error", "-i", str(output), "-map", "0:v", "-c", "copy", "-f", "md5", "-"]
        return subprocess.run(stream, capture_output=True, text=True, check=True).stdout

    every_cpu = os.sched_getaffinity(0)
    assert encoded_with({min(every_cpu)}, "one-cpu") == encoded_with(every_cpu, "every-cpu")
