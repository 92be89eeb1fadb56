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

from helios_pipeline.disk_full import is_no_space, no_space_message
from helios_pipeline.engine.audio.page_audio import ChunkPageAudio
from helios_pipeline.engine.begin_frame import dom_capture, wants_begin_frame
from helios_pipeline.engine.browser import Browser
from helios_pipeline.engine.capture import CanvasCapture, FrameCapture
from helios_pipeline.engine.cdp import CdpError
from helios_pipeline.engine.chunk_compat import probe_chunk
from helios_pipeline.engine.encode import FIRST_FRAME, ChunkEncoder, chunk_encode_command, fps_fraction
from helios_pipeline.engine.errors import NoSpaceError, PageError, RenderCancelled, RenderError
from helios_pipeline.engine.fileio import atomic_output, partial_path
from helios_pipeline.engine.page import RenderPage, frame_time_ms, load_composition, new_render_page
from helios_pipeline.engine.page_network import PageNetwork, page_network
from helios_pipeline.engine.server import composition_url
from helios_pipeline.engine.subtitles import chunk_srt
from helios_pipeline.engine.thumbnail import ladder_graph, ladder_outputs, preview_widths
from helios_pipeline.engine.tools import ffmpeg_version
from helios_pipeline.engine.watchdog import Watchdog, browser_call_failure, frame_limit, load_limit, watched_browser
from helios_pipeline.plan import RenderChunk
from helios_pipeline.processes import CHUNK_ENV, tag_children
from helios_pipeline.spec import RenderSpec

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
    """The rendering browser's version (``Browser.getVersion``)."""
    ffmpeg_version: str = ""
    """The first line of the encoding FFmpeg's ``ffmpeg -version``."""
    blocked_requests: int = 0
    """Connections the network policy refused (``engine.page_network``)."""
    blocked_urls: list[str] = field(default_factory=list)
    """The first few refused URLs (``host:port`` where the page's events named none)."""
    blocked_rule: str = ""
    """The rule that refused the first of them."""
    encoder_settings: dict[str, str] = field(default_factory=dict)
    """What stream-copy concat needs to be equal in every chunk, read from the encoded file
    (``engine.chunk_compat.probe_chunk``); ``check_chunks_compatible`` compares them."""
    first_frame_previews: tuple[bytes, ...] = field(default=(), repr=False)
    """The chunk's first frame as JPEGs at ``thumbnail.preview_widths`` of ``render_chunk``'s ``preview_bytes``,
    widest first (the ladder ``thumbnail.jpeg_within`` picks from), written by the run that encoded the chunk."""

    def to_dict(self) -> dict[str, Any]:
        """The facts as JSON values (the previews, bytes for this process's caller, are left out)."""
        facts = asdict(self)
        del facts["first_frame_previews"]
        return facts


@contextlib.contextmanager
def _chunk_subtitles(spec: RenderSpec, chunk: RenderChunk) -> Iterator[Path | None]:
    """The chunk's own SRT (cues of its frame range, shifted to its start), or None."""
    if spec.subtitles is None:
        yield None
        return
    rate = fps_fraction(spec.fps)
    with chunk_srt(spec.subtitles, Path(chunk.output_file), rate, chunk.start_frame, chunk.frame_count) as srt:
        yield srt


def make_capture(spec: RenderSpec, page: RenderPage, frame_count: int) -> FrameCapture:
    """DOM screenshots (by BeginFrame where the browser has it), or the canvas (WebCodecs in the page, or
    images) in canvas mode. Called with the page loaded, under the watchdog (the BeginFrame probe draws)."""
    if spec.mode == "canvas":
        return CanvasCapture(spec, page, frame_count)
    return dom_capture(spec, page.cdp)


def _os_failure(exc: OSError, chunk: RenderChunk, output: Path) -> OSError:
    """A full volume, named: a file the chunk writes itself (subtitles, page audio), else its folder."""
    if is_no_space(exc):
        return NoSpaceError(f"chunk {chunk.id}: {no_space_message(exc.filename or output.parent, exc.errno)}")
    return exc


def render_chunk(
    spec: RenderSpec,
    chunk: RenderChunk,
    *,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    browser: Browser | None = None,
    preview_bytes: int | None = None,
) -> ChunkResult:
    """Render ``chunk`` of ``spec`` to ``chunk.output_file``; the file exists only if it is complete.

    ``browser``: a Chromium the caller launched ahead for this chunk (with ``begin_frame.wants_begin_frame``'s
    control), which the chunk uses and closes; by default it launches its own.
    ``preview_bytes``: also the first frame's preview ladder for a JPEG of at most that many bytes
    (``ChunkResult.first_frame_previews``; none with ``video_codec: copy``), so that no FFmpeg run decodes the
    chunk again for it.
    """
    started = time.perf_counter()
    output = Path(chunk.output_file)
    page: RenderPage | None = None  # what the page threw is in its errors
    gate: PageNetwork | None = None  # the page's network policy (a page error says what it refused)
    watchdog = Watchdog(cancel)
    current_frame: int | None = None
    ladder, ladder_labels = "", []
    if preview_bytes is not None and spec.video_codec != "copy":
        ladder, ladder_labels = ladder_graph(FIRST_FRAME, preview_widths(preview_bytes))
    try:
        with (
            tag_children(CHUNK_ENV, str(output)),
            atomic_output(output) as partial,
            _chunk_subtitles(spec, chunk) as subtitles,
            composition_url(spec.composition) as url,
            page_network(spec, url) as network,
            # beside the chunk, on its volume: a full disk names the chunk's folder; a killed chunk's goes with its
            # partial file (``fileio.remove_orphaned_partials``)
            ladder_outputs(ladder_labels, partial_path(output, ".previews")) as (ladder_options, ladder_files),
            contextlib.ExitStack() as browser_stack,  # closed early: see below
        ):
            browser = browser_stack.enter_context(
                watched_browser(watchdog, begin_frame_control=wants_begin_frame(spec), started=browser)
            )
            chromium_version = browser.version
            gate = network
            watchdog.arm(load_limit(), "loading the page")
            page = new_render_page(browser, spec, network.proxy)
            network.watch(page)
            try:
                load_composition(page, url, spec)
            except RenderError:
                if rule := network.own_origin_refusal():  # a composition URL the deployment forbids
                    raise PageError(f"the network policy refuses the composition {spec.composition}: {rule}") from None
                raise
            network.check(None)
            capture = make_capture(spec, page, chunk.frame_count)
            watchdog.disarm()
            startup_seconds = time.perf_counter() - started
            encoder = ChunkEncoder(
                chunk_encode_command(
                    spec,
                    chunk.frame_count,
                    partial,
                    input_args=capture.ffmpeg_input(),
                    subtitles=subtitles,
                    first_frame=(ladder, ladder_options),
                )
            )
            capture_started = time.perf_counter()
            page_audio = ChunkPageAudio(page, url, spec, chunk, network)
            try:
                # implicit audio: scan the page's media now, render this chunk's PCM while frames are captured
                watchdog.arm(load_limit(), "scanning the page's media")
                page_audio.start()
                watchdog.disarm()
                preamble = getattr(capture, "preamble", lambda: b"")()
                if preamble:
                    encoder.write(preamble)
                for index, frame in enumerate(range(chunk.start_frame, chunk.end_frame)):
                    current_frame = frame
                    if cancel is not None and cancel.is_set():
                        raise RenderCancelled(f"chunk {chunk.id} cancelled at frame {frame}")
                    watchdog.arm(frame_limit(spec), "capturing the frame")
                    data = capture.capture(index, frame, frame_time_ms(frame, spec.fps))
                    if page.errors:
                        raise PageError(page.errors[0], frame)
                    network.check(frame)
                    watchdog.disarm()
                    if data:
                        encoder.write(data, frame)  # bounded by the encoder's own stall check
                    if on_progress is not None:
                        on_progress(index + 1)
                current_frame = None
                watchdog.arm(frame_limit(spec), "flushing the in-page encoder")
                tail = capture.finish()
                network.check(None)
                watchdog.disarm()
                if tail:
                    encoder.write(tail)
                capture_seconds = time.perf_counter() - capture_started
                encoder.end_input()
                browser_stack.close()  # Chromium shuts down while FFmpeg finishes
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
            blocked = network.summary()
            previews = tuple(file.read_bytes() for file in ladder_files)
    except (CdpError, RenderError, OSError) as exc:
        if isinstance(exc, RenderCancelled):
            raise
        if cancel is not None and cancel.is_set():  # the browser was killed for it, or the next frame saw it
            raise RenderCancelled(f"chunk {chunk.id} cancelled") from None
        if isinstance(exc, OSError):
            raise _os_failure(exc, chunk, output) from None
        failure = browser_call_failure(
            exc, watchdog=watchdog, gate=gate, page=page, frame=current_frame, what=f"chunk {chunk.id}"
        )
        if failure is exc:
            raise
        raise failure from None
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
        first_frame_previews=previews,
        **blocked,
    )
