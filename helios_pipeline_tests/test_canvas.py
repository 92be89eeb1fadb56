"""Canvas mode: the <canvas> is encoded in the page with WebCodecs (or captured as images), and
every frame is still the right frame at every chunk seam."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from helios_pipeline.engine import capture
from helios_pipeline.engine.cdp import CdpSession
from helios_pipeline.engine.encode import ChunkEncoder, chunk_encode_command
from helios_pipeline.engine.errors import PageError, RenderError
from helios_pipeline.engine.probe import probe
from helios_pipeline.engine.tools import ffmpeg_path
from helios_pipeline.orchestrator import InProcessExecutor, RenderOrchestrator
from helios_pipeline.spec import resolve_spec
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import frame_indices
from helios_pipeline_tests.helpers import assert_nothing_left

pytestmark = pytest.mark.slow

CANVAS = COMPOSITIONS / "frame_canvas"
BASE = {"width": 256, "height": 256, "fps": 30, "mode": "canvas", "canvas_selector": "#stage"}


def _render(output: Path, **options):
    return RenderOrchestrator.render(str(CANVAS), output, **{**BASE, **options})


@pytest.mark.parametrize("concurrency", [1, 3])
def test_webcodecs_canvas_render_is_frame_exact(concurrency: int, tmp_path: Path) -> None:
    result = _render(tmp_path / "out.mp4", frame_count=45, concurrency=concurrency)
    assert all(chunk.capture_method.startswith("canvas/webcodecs") for chunk in result.chunks)
    assert frame_indices(result.output) == list(range(45))
    info = probe(result.output)
    assert (info.video_codec, info.video_frames, float(info.frame_rate)) == ("h264", 45, 30.0)


@pytest.mark.parametrize("codec", ["vp9", "av1", "vp8"])
def test_each_intermediate_codec_is_frame_exact(codec: str, tmp_path: Path) -> None:
    result = _render(tmp_path / "out.mp4", frame_count=36, concurrency=3, intermediate_video_codec=codec)
    prefix = {"vp9": "vp09", "av1": "av01", "vp8": "vp8"}[codec]
    assert all(f"webcodecs {prefix}" in chunk.capture_method for chunk in result.chunks)
    assert frame_indices(result.output) == list(range(36))


def test_copy_keeps_the_in_page_stream_and_joins_exactly(tmp_path: Path) -> None:
    result = _render(tmp_path / "out.mp4", frame_count=45, concurrency=3, video_codec="copy", start_frame=30)
    assert frame_indices(result.output) == list(range(30, 75))
    assert probe(result.output).video_frames == 45


def test_webcodecs_disabled_falls_back_to_canvas_images(tmp_path: Path) -> None:
    result = _render(tmp_path / "out.mp4", frame_count=30, concurrency=2, web_codecs_preference="disabled")
    assert {chunk.capture_method for chunk in result.chunks} == {"canvas/jpeg"}
    assert frame_indices(result.output) == list(range(30))


def test_copy_without_webcodecs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="video_codec 'copy' needs an in-page WebCodecs encoder"):
        _render(tmp_path / "out.mp4", frame_count=10, concurrency=1, video_codec="copy",
                web_codecs_preference="disabled")  # fmt: skip
    assert not (tmp_path / "out.mp4").exists()


def test_missing_canvas_names_the_selector(tmp_path: Path) -> None:
    with pytest.raises(PageError, match=r'no <canvas> matches "#nope"'):
        _render(tmp_path / "out.mp4", frame_count=10, concurrency=1, canvas_selector="#nope")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("budget_ms", "round_trips"), [(60_000, 3), (0, 45)])
def test_webcodecs_frames_are_seeked_in_batches_per_round_trip(
    budget_ms: int, round_trips: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to CANVAS_BATCH_FRAMES frames per CDP call (16 + 16 + 13 of 45), fewer when a call has used
    its time budget (none left: one frame per call); the frames are the same either way."""
    seek_calls: list[str] = []
    send = CdpSession.send

    def counting_send(self: CdpSession, method: str, params: dict | None = None, timeout: float | None = None) -> dict:
        if method == "Runtime.evaluate" and params["expression"].startswith("window.__helios_canvas.encodeFrames("):
            seek_calls.append(params["expression"])
        return send(self, method, params, timeout)

    monkeypatch.setattr(CdpSession, "send", counting_send)
    monkeypatch.setattr(capture, "CANVAS_BATCH_BUDGET_MS", budget_ms)
    result = _render(tmp_path / "out.mp4", frame_count=45, concurrency=1, executor=InProcessExecutor())
    assert len(seek_calls) == round_trips
    assert frame_indices(result.output) == list(range(45))


def test_seeks_wait_for_the_in_page_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next frame is seeked only while the in-page encoder holds at most 4 frames
    (canvas_capture.js, MAX_QUEUED_FRAMES): AV1's software encoder is far slower than this page's
    seeks, and without the wait it held 10-13 frames after every batch of 16, all flushed at the end."""
    held: list[int] = []
    packets = capture.CanvasCapture._packets

    def recording_packets(self: capture.CanvasCapture, taken: dict) -> bytes:
        if "queued" in taken:
            held.append(taken["queued"])
        return packets(self, taken)

    monkeypatch.setattr(capture.CanvasCapture, "_packets", recording_packets)
    result = _render(tmp_path / "out.mp4", frame_count=48, concurrency=1, intermediate_video_codec="av1",
                     executor=InProcessExecutor())  # fmt: skip
    assert len(held) == 3 and max(held) <= 4, held
    assert frame_indices(result.output) == list(range(48))


THROWS_AT_20 = """<!doctype html><html><body style="margin:0"><canvas id="stage"></canvas><script>
  function tick() {
    if (performance.now() >= 20 * 1000 / 30) throw new Error("boom at the twentieth frame");
    document.getElementById("stage").getContext("2d").fillRect(0, 0, 8, 8);
    requestAnimationFrame(tick);
  }
  requestAnimationFrame(tick);
</script></body></html>"""


def test_a_throw_inside_a_batch_names_its_own_frame(tmp_path: Path) -> None:
    page = tmp_path / "throws" / "index.html"
    page.parent.mkdir()
    page.write_text(THROWS_AT_20)
    output = tmp_path / "out" / "video.mp4"
    output.parent.mkdir()
    with pytest.raises(PageError, match=r"frame 20: the page threw: Error: boom at the twentieth frame"):
        RenderOrchestrator.render(str(page.parent), output, **{**BASE, "frame_count": 30, "concurrency": 1})
    assert_nothing_left(output)


def test_the_chunk_encoder_starts_on_the_first_webcodecs_frames(tmp_path: Path) -> None:
    """FFmpeg encodes an in-page H.264 stream while it still arrives (it does not first buffer
    5 MB of it): half a stream in, encoded frames are already in the chunk file."""
    stream = tmp_path / "stream.h264"
    subprocess.run(
        [ffmpeg_path(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-frames:v", "120",
         "-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-f", "h264", str(stream)],
        check=True,
    )  # fmt: skip
    data = stream.read_bytes()
    assert len(data) < 5_000_000  # under FFmpeg's default probe size: it would wait for the end
    size = {"width": 640, "height": 360, "frame_count": 120, "preset": "ultrafast"}
    spec = resolve_spec(str(CANVAS), tmp_path / "out.mp4", {**BASE, **size})
    output = tmp_path / "chunk.mov"
    input_args = capture.webcodecs_input(spec, "avc1.4d002a")
    encoder = ChunkEncoder(chunk_encode_command(spec, 120, output, input_args=input_args))
    try:
        encoder.write(data[: len(data) // 2])
        deadline = time.monotonic() + 30
        while not (output.is_file() and output.stat().st_size > 32 * 1024) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert output.is_file() and output.stat().st_size > 32 * 1024, "FFmpeg wrote nothing before the stream ended"
        encoder.write(data[len(data) // 2 :])
        encoder.finish()
    finally:
        encoder.kill()
    assert probe(output).video_frames == 120
