"""Failures and cancels: clear errors naming the page and frame, nothing half-written, no strays."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helios_pipeline.engine.errors import PageError, RenderCancelled, RenderError
from helios_pipeline.orchestrator import InProcessExecutor, LocalExecutor, RenderOrchestrator
from helios_pipeline.plan import default_work_dir
from helios_pipeline_tests.conftest import COMPOSITIONS, processes_for
from helios_pipeline_tests.framecode import frame_indices
from helios_pipeline_tests.helpers import (
    assert_nothing_left,
    browser_scratch,
)

pytestmark = pytest.mark.slow

SMALL = {"width": 160, "height": 120, "fps": 30}


def test_page_that_throws_on_load_fails_with_its_message(tmp_path: Path) -> None:
    output = tmp_path / "out" / "video.mp4"
    output.parent.mkdir()
    with pytest.raises(PageError, match="composition exploded on load"):
        RenderOrchestrator.render(str(COMPOSITIONS / "throws"), output, frame_count=10, concurrency=2, **SMALL)
    assert_nothing_left(output)


def test_page_that_throws_mid_render_names_the_frame_and_aborts_siblings(tmp_path: Path) -> None:
    output = tmp_path / "out" / "video.mp4"
    output.parent.mkdir()
    with pytest.raises(PageError, match=r"frame 20: .*boom at the twentieth frame"):
        RenderOrchestrator.render(str(COMPOSITIONS / "throws_late"), output, frame_count=40, concurrency=2, **SMALL)
    assert_nothing_left(output)


def test_frame_that_never_becomes_ready_times_out_with_the_frame_number(tmp_path: Path) -> None:
    output = tmp_path / "out" / "video.mp4"
    output.parent.mkdir()
    with pytest.raises(
        PageError, match=r"frame 0: did not become ready: timed out after 500 ms waiting for helios.waitUntilStable\(\)"
    ):
        RenderOrchestrator.render(
            str(COMPOSITIONS / "stuck"), output, frame_count=5, concurrency=1, stability_timeout=500, **SMALL
        )
    assert_nothing_left(output)


def test_unreachable_url_fails_before_rendering(tmp_path: Path) -> None:
    output = tmp_path / "out" / "video.mp4"
    output.parent.mkdir()
    with pytest.raises(Exception, match=r"http://127\.0\.0\.1:9/.*unreachable"):
        RenderOrchestrator.render("http://127.0.0.1:9/", output, frame_count=5, **SMALL)
    assert_nothing_left(output)


@pytest.mark.parametrize(
    ("concurrency", "executor"),
    [(1, InProcessExecutor), (2, InProcessExecutor), (2, LocalExecutor)],
    ids=["one chunk", "two chunks", "two chunk workers"],
)
def test_cancel_event_mid_render_stops_everything(concurrency: int, executor: type, tmp_path: Path) -> None:
    output = tmp_path / "out" / "video.mp4"
    output.parent.mkdir()
    cancel = threading.Event()
    progress: list[float] = []
    scratch_before = browser_scratch()

    def on_progress(value: float) -> None:
        progress.append(value)
        if value > 0.05:
            cancel.set()

    with pytest.raises(RenderCancelled):
        RenderOrchestrator.render(
            str(COMPOSITIONS / "slow"), output, frame_count=300, concurrency=concurrency, on_progress=on_progress,
            cancel=cancel, executor=executor(), **SMALL,
        )  # fmt: skip
    assert 0 < progress[-1] < 0.9
    assert_nothing_left(output)
    assert browser_scratch() <= scratch_before, "the killed browsers' profile folders were left in the temp folder"


@pytest.mark.parametrize("concurrency", ["1", "2"], ids=["one chunk", "two chunks"])
def test_ctrl_c_on_the_cli_leaves_nothing_behind(concurrency: str, tmp_path: Path) -> None:
    output = tmp_path / "out" / "video.mp4"
    output.parent.mkdir()
    command = [
        sys.executable, "-m", "helios_pipeline.cli", "render", "--local", str(COMPOSITIONS / "slow"), "-o", str(output),
        "--width", "160", "--height", "120", "--fps", "30", "--frames", "300", "--concurrency", concurrency,
    ]  # fmt: skip
    scratch_before = browser_scratch()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(p.name().startswith(("chrom", "headless")) for p in processes_for(default_work_dir(output))):
        assert time.monotonic() < deadline, "the render never started its browsers"
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.2)
    time.sleep(1.5)  # mid-render
    os.killpg(process.pid, signal.SIGINT)  # what a terminal sends to the foreground group on Ctrl-C
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "cancelled" in stderr
    assert_nothing_left(output)
    assert browser_scratch() <= scratch_before, "the killed browsers' profile folders were left in the temp folder"


def test_a_render_killed_outright_leaves_nothing_once_it_is_rendered_again(tmp_path: Path) -> None:
    """SIGKILL (the out-of-memory killer) gives the CLI no chance to clean up: its browsers and FFmpeg end with their
    pipes, and its partial chunk files stay in the work folder. The same render run again renders every frame and
    leaves only the video and its contact sheet beside it."""
    output = tmp_path / "out" / "video.mp4"
    frames = 600
    command = [
        sys.executable, "-m", "helios_pipeline.cli", "render", "--local", str(COMPOSITIONS / "frame_raf"),
        "-o", str(output), "--width", "160", "--height", "120", "--fps", "30", "--frames", str(frames),
        "--concurrency", "2", "-q",
    ]  # fmt: skip
    work_dir = default_work_dir(output)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len([p for p in work_dir.glob(".chunk_*.partial-*") if p.stat().st_size]) < 2:
            assert time.monotonic() < deadline, "the render never wrote both chunks"
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.05)
        process.kill()  # the CLI alone, as the out-of-memory killer would
    finally:
        process.kill()
        process.communicate(timeout=30)
    deadline = time.monotonic() + 15
    while processes_for(work_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_for(work_dir) == [], "the killed render's Chromium or FFmpeg ran on"
    assert list(work_dir.glob(".chunk_*.partial-*")), "the kill left no partial chunk (nothing for this test to show)"

    again = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert frame_indices(output) == list(range(frames))
    assert sorted(path.name for path in output.parent.iterdir()) == ["video.contact.png", "video.mp4"]


def test_a_second_render_of_the_same_output_at_once_fails_at_once_naming_it(tmp_path: Path) -> None:
    """Two renders of one output at once (an overlapping scheduled job) would write the same chunk files and remove
    each other's: the second fails before it renders anything, naming the output, and the first is untouched."""
    output = tmp_path / "out" / "video.mp4"
    frames = 240
    first_result: list[object] = []

    def render_first() -> None:
        composition = str(COMPOSITIONS / "frame_raf")
        first_result.append(RenderOrchestrator.render(composition, output, frame_count=frames, concurrency=2, **SMALL))

    first = threading.Thread(target=render_first)
    first.start()
    try:
        deadline = time.monotonic() + 60
        while not list(default_work_dir(output).glob(".chunk_*.partial-*")):
            assert time.monotonic() < deadline and first.is_alive(), "the first render never started its chunks"
            time.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(RenderError, match=rf"{re.escape(str(output))} is being rendered by another process"):
            RenderOrchestrator.render(str(COMPOSITIONS / "frame_raf"), output, frame_count=frames, **SMALL)
        assert time.monotonic() - started < 5, "the second render must fail before it renders"
    finally:
        first.join(timeout=120)
    assert first_result, "the first render failed"
    assert frame_indices(output) == list(range(frames))
    assert sorted(path.name for path in output.parent.iterdir()) == ["video.contact.png", "video.mp4"]


def test_render_error_from_a_crashed_worker_is_reported(tmp_path: Path) -> None:
    """A worker killed from outside (OOM killer, say) fails the render with a clear error."""
    output = tmp_path / "out" / "video.mp4"
    output.parent.mkdir()
    result: dict[str, BaseException] = {}

    def run() -> None:
        try:
            RenderOrchestrator.render(
                str(COMPOSITIONS / "slow"), output, frame_count=300, concurrency=2, executor=LocalExecutor(), **SMALL
            )
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while True:
        workers = [
            p
            for p in processes_for(default_work_dir(output))
            if "helios_pipeline.engine.worker" in " ".join(p.cmdline())
        ]
        if workers:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1.0)
    workers[0].kill()
    thread.join(timeout=60)
    assert isinstance(result.get("error"), RenderError)
    assert re.search(r"chunk [01]: worker exited with code -9", str(result["error"])), result["error"]
    assert_nothing_left(output)


def test_chunks_render_in_the_calling_process_unless_workers_are_asked_for(tmp_path: Path) -> None:
    """No worker process to start (a Python interpreter and the engine's imports) by default."""
    output = tmp_path / "out" / "video.mp4"
    output.parent.mkdir()
    result = RenderOrchestrator.render(str(COMPOSITIONS / "frame_css"), output, frame_count=6, concurrency=2, **SMALL)
    assert [chunk.pid for chunk in result.chunks] == [os.getpid(), os.getpid()]
    result = RenderOrchestrator.render(
        str(COMPOSITIONS / "frame_css"), output, frame_count=6, concurrency=2, executor=LocalExecutor(), **SMALL
    )
    assert len({chunk.pid for chunk in result.chunks} | {os.getpid()}) == 3


NEVER_LOADS = "<!doctype html><html><body><script>while (true) {}</script></body></html>"


def test_cancelling_an_in_process_chunk_whose_page_never_loads_is_prompt(tmp_path: Path) -> None:
    """Its watchdog kills its browser as soon as the render is cancelled, instead of waiting out the load
    limit (75 s); the error is the cancel, and nothing is left behind."""
    page = tmp_path / "never_loads" / "index.html"
    page.parent.mkdir()
    page.write_text(NEVER_LOADS)
    output = tmp_path / "out" / "video.mp4"
    output.parent.mkdir()
    cancel = threading.Event()
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            RenderOrchestrator.render(str(page.parent), output, frame_count=5, concurrency=1, cancel=cancel, **SMALL)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while not any(p.name().startswith(("chrom", "headless")) for p in processes_for(default_work_dir(output))):
        assert time.monotonic() < deadline, "the chunk's browser (tagged with its output) never showed"
        time.sleep(0.2)
    time.sleep(1.0)  # the page's script is spinning: the load never ends
    cancelled_at = time.monotonic()
    cancel.set()
    thread.join(timeout=60)
    assert time.monotonic() - cancelled_at < 10
    assert isinstance(outcome.get("error"), RenderCancelled), outcome
    assert_nothing_left(output)
