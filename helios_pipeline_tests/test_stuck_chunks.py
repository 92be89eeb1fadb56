"""Stuck chunks end within a bounded time: a Chromium that stops answering CDP or an FFmpeg that stops
reading its input (both simulated with SIGSTOP mid-chunk) fails the chunk naming the frame, with
``StuckError`` (retried by Dagster), no partial file and no process left behind, stopped or not."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import dagster as dg
import psutil
import pytest

from helios_pipeline.dagster_defs.assets import chunk_video, render_plan
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.engine import encode as encode_module
from helios_pipeline.engine import watchdog as watchdog_module
from helios_pipeline.engine.chunk import render_chunk
from helios_pipeline.engine.encode import ChunkEncoder, chunk_encode_command
from helios_pipeline.engine.errors import StuckError
from helios_pipeline.engine.tools import ffmpeg_path
from helios_pipeline.plan import RenderChunk, default_work_dir
from helios_pipeline.processes import alive, start_group, stop_group
from helios_pipeline.spec import RenderSpec, validate_spec
from helios_pipeline_tests.conftest import COMPOSITIONS, processes_for
from helios_pipeline_tests.framecode import frame_indices
from helios_pipeline_tests.helpers import (
    assert_nothing_left,
    busy_composition,
    chunk_key,
    is_browser_main,
    latest_metadata,
    register,
    run,
    write_spec,
)

pytestmark = pytest.mark.slow

# Seeded noise on a canvas, new in every frame: each screenshot is ~25 KB of JPEG, so a stopped
# FFmpeg's pipe (64 KB) and the encoder's queue fill within a few frames.
NOISE = """<!doctype html><html><body style="margin:0"><canvas id="c" width="160" height="120"></canvas><script>
  const ctx = document.getElementById("c").getContext("2d");
  function draw() {
    const image = ctx.createImageData(160, 120);
    for (let i = 0; i < image.data.length; i++) image.data[i] = (i % 4 === 3) ? 255 : (Math.random() * 256) | 0;
    ctx.putImageData(image, 0, 0);
    requestAnimationFrame(draw);
  }
  requestAnimationFrame(draw);
</script></body></html>"""


def _spec(composition: Path, tmp_path: Path, **keys: object) -> RenderSpec:
    data = {"composition": str(composition), "width": 160, "height": 120, "fps": 30, **keys}
    return validate_spec(data, base_dir=tmp_path, source="test")


def _children() -> list[psutil.Process]:
    return alive(psutil.Process().children(recursive=True))


def _stop(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """SIGSTOP each of ``processes`` (what a debugger, a freezer or an overloaded host does to them)."""
    stopped = []
    for process in processes:
        try:
            process.send_signal(signal.SIGSTOP)
            stopped.append(process)
        except psutil.Error:
            continue
    assert stopped, "nothing to stop"
    return stopped


def _browser_tree(candidates: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The Chromium browser process among ``candidates`` (not the wrapper script that may run it) and all below it."""
    for process in candidates:
        try:
            if is_browser_main(process):
                return [process, *process.children(recursive=True)]
        except psutil.Error:
            continue
    raise AssertionError("no Chromium of this chunk found")


def _encoding_ffmpeg() -> psutil.Process:
    found = [p for p in _children() if p.name() == "ffmpeg" and "pipe:0" in p.cmdline()]
    assert len(found) == 1, found
    return found[0]


def _wait_gone(processes: list[psutil.Process], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [f"{p.pid} {p.name()} {p.status()}" for p in alive(processes)]
    assert not left, f"{what} left behind: {left}"


def _render_and_stop_at(
    spec: RenderSpec, chunk: RenderChunk, at_frames: int, stop: Callable[[], list[psutil.Process]]
) -> tuple[StuckError, float, list[psutil.Process]]:
    """Render ``chunk``, SIGSTOPping ``stop()``'s processes once ``at_frames`` frames are done.

    Returns the chunk's error, how long after the stop it came, and the stopped processes.
    """
    stopped: list[psutil.Process] = []
    stopped_at = [0.0]

    def on_progress(frames: int) -> None:
        if frames == at_frames:
            stopped.extend(stop())
            stopped_at[0] = time.monotonic()

    with pytest.raises(StuckError) as caught:
        render_chunk(spec, chunk, on_progress=on_progress)
    return caught.value, time.monotonic() - stopped_at[0], stopped


def test_a_chromium_that_stops_answering_fails_its_chunk_in_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watchdog_module, "WATCHDOG_MARGIN_S", 1.0)  # fire 1.5 s after the stop, not 15.5 s
    spec = _spec(COMPOSITIONS / "frame_css", tmp_path, frame_count=12, stability_timeout=500)
    chunk = RenderChunk(id=0, start_frame=0, frame_count=12, output_file=tmp_path / "out" / "chunk.mov")
    before = {p.pid for p in _children()}

    error, seconds, stopped = _render_and_stop_at(spec, chunk, 3, lambda: _stop(_browser_tree(_children())))

    # frames 0-2 were captured; seeking frame 3 is the call Chromium never answers
    assert re.match(
        r"frame 3: Chromium stopped answering while capturing the frame "
        r"\(no reply within \d+ s, \d+ of its processes were stopped\); its browser was killed",
        str(error),
    ), error
    limit = watchdog_module.frame_limit(spec)
    assert limit <= seconds < limit + 6, f"the chunk took {seconds:.1f} s to fail after the stop (limit {limit} s)"
    assert error.frame == 3
    _wait_gone(stopped, "stopped Chromium processes")
    _wait_gone([p for p in _children() if p.pid not in before], "Chromium or FFmpeg processes")
    assert sorted(path.name for path in chunk.output_file.parent.iterdir()) == [], "a partial chunk file was left"


def test_an_ffmpeg_that_stops_reading_fails_its_chunk_in_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encode_module, "ENCODER_STALL_S", 2.0)
    page = tmp_path / "noise" / "index.html"
    page.parent.mkdir()
    page.write_text(NOISE, encoding="utf-8")
    spec = _spec(page, tmp_path, frame_count=60)
    chunk = RenderChunk(id=0, start_frame=0, frame_count=60, output_file=tmp_path / "out" / "chunk.mov")
    before = {p.pid for p in _children()}

    error, seconds, stopped = _render_and_stop_at(spec, chunk, 2, lambda: _stop([_encoding_ffmpeg()]))

    match = re.match(
        r"frame (\d+): chunk encode: FFmpeg stopped reading its input \(it took nothing for 2 s\) and was killed",
        str(error),
    )
    assert match, error
    # FFmpeg took frames 0-1 before it stopped; the first it never took is one of the next few
    # (the rest fill its pipe and the encoder's queue of 8)
    assert 2 <= int(match.group(1)) < 2 + 8, error
    assert seconds < 2.0 + 15, f"the chunk took {seconds:.1f} s to fail after FFmpeg stopped"
    _wait_gone(stopped, "the stopped FFmpeg")
    _wait_gone([p for p in _children() if p.pid not in before], "Chromium or FFmpeg processes")
    assert sorted(path.name for path in chunk.output_file.parent.iterdir()) == [], "a partial chunk file was left"


def test_an_ffmpeg_that_stops_after_its_last_input_is_killed_when_it_uses_no_cpu(tmp_path: Path) -> None:
    """finish() is no flat wait: FFmpeg that holds the chunk's last frames and does nothing is stuck."""
    spec = _spec(COMPOSITIONS / "frame_css", tmp_path, frame_count=3)
    frames = subprocess.run(
        [ffmpeg_path(), "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=30", "-frames:v", "3",
         "-c:v", "mjpeg", "-f", "image2pipe", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    encoder = ChunkEncoder(chunk_encode_command(spec, 3, tmp_path / "chunk.mov"), stall_seconds=2.0)
    (stopped,) = _stop([_encoding_ffmpeg()])  # before it reads anything: its input fits in the pipe
    encoder.write(frames, 0)
    started = time.monotonic()
    with pytest.raises(StuckError, match=r"FFmpeg stopped working after its last input \(used no CPU for 2 s\)"):
        encoder.finish()
    assert 2.0 <= time.monotonic() - started < 2.0 + 10
    _wait_gone([stopped], "the stopped FFmpeg")


def test_the_cli_reports_a_stuck_browser_and_exits_non_zero_with_no_orphans(tmp_path: Path) -> None:
    """The library path: a chunk worker's Chromium stops; the render fails naming the frame, nothing is left."""
    output = tmp_path / "out" / "video.mp4"
    output.parent.mkdir()
    command = [
        sys.executable, "-m", "helios_pipeline.cli", "render", "--local", str(COMPOSITIONS / "slow"), "-o", str(output),
        "--width", "160", "--height", "120", "--fps", "30", "--frames", "300", "--concurrency", "1", "--quiet",
        "--set", "stability_timeout=500",
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    work_dir = default_work_dir(output)
    deadline = time.monotonic() + 90
    while not any(p.name() == "ffmpeg" for p in processes_for(work_dir)):  # the chunk is capturing frames
        assert time.monotonic() < deadline, "the render never started its chunk"
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    time.sleep(1.0)  # mid-chunk
    stopped = _stop(_browser_tree(processes_for(work_dir)))
    stopped_at = time.monotonic()
    stdout, stderr = process.communicate(timeout=120)
    seconds = time.monotonic() - stopped_at
    assert process.returncode == 1, (stdout, stderr)
    text = " ".join((stdout + stderr).split())  # rich may wrap the message
    assert re.search(r"chunk 0: frame \d+: Chromium stopped answering while capturing the frame", text), text
    limit = 0.5 + watchdog_module.WATCHDOG_MARGIN_S
    assert seconds < limit + 30, f"the render took {seconds:.1f} s to fail after the stop (limit {limit} s)"
    _wait_gone(stopped, "stopped Chromium processes")
    assert_nothing_left(output)


def test_a_stopped_process_group_gets_to_clean_up_when_it_is_stopped(tmp_path: Path) -> None:
    """stop_group continues a SIGSTOPped child: it acts on SIGTERM at once, not SIGKILLed after the grace."""
    ready, cleaned = tmp_path / "ready", tmp_path / "cleaned"
    script = (
        "import pathlib, signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path({str(cleaned)!r}).touch(), sys.exit(0)))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(120)\n"
    )
    child = start_group([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline and child.poll() is None, "the child never started"
        time.sleep(0.1)
    (stopped,) = _stop([psutil.Process(child.pid)])
    started = time.monotonic()
    stop_group(child, grace=10)
    assert time.monotonic() - started < 5, "the stopped child waited out the grace: it never saw SIGTERM"
    assert cleaned.exists(), "the child was killed without running its SIGTERM handler"
    _wait_gone([stopped], "the stopped child")


CAPTURING_AFTER_S = 0.3
"""How long after the chunk's encoder appears its capture loop is surely on a frame: the encoder starts right
before the first frame, and each busy frame takes 50-100 ms (30 of them outlast this even on a fast machine)."""


def _stop_the_first_browser_once_it_captures(stopped: list[psutil.Process], done: threading.Event) -> None:
    """Watch this process's children; SIGSTOP the first chunk browser once its capture is under way, then quit.

    Under way: its FFmpeg has been running for ``CAPTURING_AFTER_S``. (Waiting for FFmpeg to use CPU instead
    lost the race on a loaded machine: the capture ended before FFmpeg, behind it, had used 50 ms.)"""
    encoder_seen: float | None = None
    while not done.is_set():
        children = _children()
        if encoder_seen is None and any(p.name() == "ffmpeg" and "pipe:0" in p.cmdline() for p in children):
            encoder_seen = time.monotonic()
        if encoder_seen is not None and time.monotonic() - encoder_seen >= CAPTURING_AFTER_S:
            stopped.extend(_stop(_browser_tree(children)))
            return
        time.sleep(0.05)


STALLED_FRAMES = 30


def test_dagster_retries_a_chunk_whose_chromium_stopped_answering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt's Chromium is stopped mid-chunk: StuckError, a step retry, and the retry renders the chunk."""
    monkeypatch.setattr(watchdog_module, "WATCHDOG_MARGIN_S", 1.0)
    composition = busy_composition(tmp_path / "busy")
    storage = RenderStorage(location=str(tmp_path / "storage"))
    with dg.instance_for_test() as instance:
        # 30 busy frames: the capture must outlast the watcher's CAPTURING_AFTER_S
        spec_file = write_spec(
            tmp_path, "stalls", composition, frame_count=STALLED_FRAMES, concurrency=1, stability_timeout=500
        )
        key = register(instance, storage, spec_file)
        run(instance, storage, [render_plan], key)
        stopped: list[psutil.Process] = []
        done = threading.Event()
        watcher = threading.Thread(target=_stop_the_first_browser_once_it_captures, args=(stopped, done), daemon=True)
        watcher.start()
        try:
            result = run(instance, storage, [chunk_video], chunk_key(key, "000"), raise_on_error=False)
        finally:
            done.set()
            watcher.join(timeout=10)

        assert stopped, "the first attempt's browser was never stopped"
        assert result.success
        events = result.all_events
        retries = [e for e in events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
        assert len(retries) == 1, [e.event_type for e in events]
        reason = " ".join(filter(None, [retries[0].message, str(retries[0].event_specific_data)]))
        assert re.search(r"frame \d+: Chromium stopped answering while capturing the frame", reason), reason
        assert not any(e.is_step_failure for e in events)
        metadata = latest_metadata(instance, chunk_video.key, chunk_key(key, "000"))
        assert frame_indices(Path(metadata["path"].value)) == list(range(STALLED_FRAMES))
    _wait_gone(stopped, "the first attempt's stopped Chromium")
