"""Render one chunk: seek every frame of a range in one Chromium and pipe its pictures to FFmpeg."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, CDPSession, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from helios_pipeline.disk_full import is_no_space, no_space_message
from helios_pipeline.engine.audio.page_audio import ChunkPageAudio
from helios_pipeline.engine.browser import kill_browser_tree, launch_browser
from helios_pipeline.engine.capture import CanvasCapture, DomCapture, FrameCapture
from helios_pipeline.engine.chunk_compat import probe_chunk
from helios_pipeline.engine.encode import ChunkEncoder, chunk_encode_command, fps_fraction
from helios_pipeline.engine.errors import NoSpaceError, PageError, RenderCancelled, RenderError
from helios_pipeline.engine.fileio import atomic_output
from helios_pipeline.engine.page import frame_time_ms, load_composition, new_render_page
from helios_pipeline.engine.server import composition_url
from helios_pipeline.engine.subtitles import chunk_srt
from helios_pipeline.engine.tools import ffmpeg_version
from helios_pipeline.plan import RenderChunk
from helios_pipeline.spec import RenderSpec

WATCHDOG_MARGIN_S = 15.0

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class ChunkResult:
    """Timings and facts about one rendered chunk (numbers, so they can be plotted)."""

    chunk_id: int
    start_frame: int
    frame_count: int
    output_file: str
    wall_seconds: float
    browser_startup_seconds: float
    capture_seconds: float
    capture_fps: float
    encode_seconds: float
    encode_cpu_seconds: float
    bytes: int
    host: str
    pid: int
    capture_method: str = "dom"
    page_audio_sources: int = 0
    """Audible <audio>/<video> elements of the page whose sound the chunk carries (as PCM)."""
    chromium_version: str = ""
    """The rendering browser's version (Playwright's ``browser.version``)."""
    ffmpeg_version: str = ""
    """The first line of the encoding FFmpeg's ``ffmpeg -version``."""
    encoder_settings: dict[str, str] = field(default_factory=dict)
    """What stream-copy concat needs to be equal in every chunk, read from the encoded file
    (``engine.chunk_compat.probe_chunk``); ``check_chunks_compatible`` compares them."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Watchdog:
    """Kills this chunk's Chromium if a frame hangs, so a stuck page fails instead of blocking forever.

    Only the browser given to ``watch`` dies: chunks rendering as threads of one process keep theirs.
    """

    def __init__(self, limit_seconds: float):
        self.limit = limit_seconds
        self.fired = False
        self._browser: Browser | None = None
        self._deadline: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="helios-watchdog", daemon=True)
        self._thread.start()

    def watch(self, browser: Browser) -> None:
        self._browser = browser

    def arm(self) -> None:
        self._deadline = time.monotonic() + self.limit

    def disarm(self) -> None:
        self._deadline = None

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            if self._deadline is not None and time.monotonic() > self._deadline:
                self.fired = True
                self._deadline = None
                if self._browser is not None:
                    kill_browser_tree(self._browser)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


@contextlib.contextmanager
def _chunk_subtitles(spec: RenderSpec, chunk: RenderChunk) -> Iterator[Path | None]:
    """The chunk's own SRT (cues of its frame range, shifted to its start), or None."""
    if spec.subtitles is None:
        yield None
        return
    rate = fps_fraction(spec.fps)
    with chunk_srt(spec.subtitles, Path(chunk.output_file), rate, chunk.start_frame, chunk.frame_count) as srt:
        yield srt


def make_capture(spec: RenderSpec, cdp: CDPSession, page: Page, frame_count: int) -> FrameCapture:
    """DOM screenshots, or the canvas (WebCodecs in the page, or images) in canvas mode."""
    if spec.mode == "canvas":
        return CanvasCapture(spec, cdp, page, frame_count)
    return DomCapture(spec, cdp)


def render_chunk(
    spec: RenderSpec,
    chunk: RenderChunk,
    *,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> ChunkResult:
    """Render ``chunk`` of ``spec`` to ``chunk.output_file``; the file exists only if it is complete."""
    started = time.perf_counter()
    output = Path(chunk.output_file)
    page_errors: list[str] = []  # what the page threw (filled once the page exists)
    watchdog = _Watchdog(spec.stability_timeout / 1000 + WATCHDOG_MARGIN_S)
    current_frame: int | None = None
    try:
        with (
            atomic_output(output) as partial,
            _chunk_subtitles(spec, chunk) as subtitles,
            composition_url(spec.composition) as url,
            sync_playwright() as playwright,
            launch_browser(playwright) as browser,
        ):
            watchdog.watch(browser)
            chromium_version = browser.version
            context, page, page_errors = new_render_page(browser, spec)
            watchdog.arm()
            cdp = load_composition(context, page, url, spec, page_errors)
            capture = make_capture(spec, cdp, page, chunk.frame_count)
            startup_seconds = time.perf_counter() - started
            encoder = ChunkEncoder(
                chunk_encode_command(
                    spec, chunk.frame_count, partial, input_args=capture.ffmpeg_input(), subtitles=subtitles
                )
            )
            capture_started = time.perf_counter()
            page_audio = ChunkPageAudio(page, url, spec, chunk)
            try:
                # implicit audio: scan the page's media now, render this chunk's PCM while frames are captured
                watchdog.arm()
                page_audio.start()
                preamble = getattr(capture, "preamble", lambda: b"")()
                if preamble:
                    encoder.write(preamble)
                for index, frame in enumerate(range(chunk.start_frame, chunk.end_frame)):
                    current_frame = frame
                    if cancel is not None and cancel.is_set():
                        raise RenderCancelled(f"chunk {chunk.id} cancelled at frame {frame}")
                    watchdog.arm()
                    data = capture.capture(index, frame, frame_time_ms(frame, spec.fps))
                    if page_errors:
                        raise PageError(page_errors[0], frame)
                    watchdog.disarm()
                    if data:
                        encoder.write(data)
                    if on_progress is not None:
                        on_progress(index + 1)
                current_frame = None
                watchdog.arm()
                tail = capture.finish()
                watchdog.disarm()
                if tail:
                    encoder.write(tail)
                capture_seconds = time.perf_counter() - capture_started
                encoder.finish()
                page_audio.mux_into(partial)
            except BaseException:
                encoder.kill()
                raise
            finally:
                page_audio.close()
            probed = probe_chunk(partial)
            if probed.frames != chunk.frame_count:
                raise RenderError(f"chunk {chunk.id}: encoded {probed.frames} frames, expected {chunk.frame_count}")
            size = partial.stat().st_size
    except PlaywrightError as exc:
        if watchdog.fired:
            raise PageError(
                f"did not become ready within {watchdog.limit:.0f} s (the page is stuck)", current_frame
            ) from None
        if page_errors:
            raise PageError(page_errors[0], current_frame) from None
        raise RenderError(f"chunk {chunk.id}: browser failed: {exc.message.splitlines()[0]}") from None
    except OSError as exc:
        if is_no_space(exc):  # a file the chunk writes itself (subtitles, page audio): its name, else its folder
            raise NoSpaceError(
                f"chunk {chunk.id}: {no_space_message(exc.filename or output.parent, exc.errno)}"
            ) from None
        raise
    finally:
        watchdog.close()
    return ChunkResult(
        chunk_id=chunk.id,
        start_frame=chunk.start_frame,
        frame_count=chunk.frame_count,
        output_file=str(output),
        wall_seconds=time.perf_counter() - started,
        browser_startup_seconds=startup_seconds,
        capture_seconds=capture_seconds,
        capture_fps=chunk.frame_count / capture_seconds if capture_seconds > 0 else 0.0,
        encode_seconds=encoder.encode_seconds,
        encode_cpu_seconds=encoder.encode_cpu_seconds,
        bytes=size,
        host=socket.gethostname(),
        pid=os.getpid(),
        capture_method=capture.description,
        page_audio_sources=page_audio.track_count,
        chromium_version=chromium_version,
        ffmpeg_version=ffmpeg_version(),
        encoder_settings=probed.encoder_settings,
    )
