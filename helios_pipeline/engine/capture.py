"""Capture strategies: how one seeked frame becomes bytes for FFmpeg's stdin.

- DOM mode: a screenshot (JPEG or PNG) of the viewport, taken by the BeginFrame that draws the frame
  (``engine.begin_frame``, chromium-headless-shell) or else by CDP ``Page.captureScreenshot``.
- Canvas mode: the page's ``<canvas>`` encoded in the page with WebCodecs (H.264 as Annex B, or
  VP8/VP9/AV1 wrapped in IVF here), several frames seeked and encoded per CDP round trip; or,
  when WebCodecs is disabled or has no usable codec, the canvas as an image, one frame per trip.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

from helios_pipeline.engine.cdp import BrowserClosed, CdpError, CdpSession
from helios_pipeline.engine.encode import fps_fraction
from helios_pipeline.engine.errors import PageError, RenderError
from helios_pipeline.engine.page import RenderPage, evaluate, frame_time_ms, seek_failure
from helios_pipeline.engine.page_scripts import page_script
from helios_pipeline.spec import RenderSpec

CANVAS_WAIT_MS = 5000
CANVAS_BATCH_FRAMES = 16
"""WebCodecs canvas mode seeks and encodes up to this many frames per CDP round trip: a round trip
(Python -> Chromium and back) costs more CPU than seeking and encoding a
simple frame, and the CPU is shared with the encoder (benchmarks/README.md, bench_canvas.py)."""
CANVAS_BATCH_BUDGET_MS = 250
"""... and starts no further frame in that call after this much real time, so one call lasts at
most this longer than its slowest frame (the per-frame watchdog stays meaningful)."""
DEFAULT_CANDIDATES = ("avc1.4d002a", "vp09.00.10.08", "av01.0.08M.08", "vp8")
CODEC_ALIASES = {"h264": "avc1.4d002a", "avc": "avc1.4d002a", "vp9": "vp09.00.10.08", "av1": "av01.0.08M.08"}
IVF_FOURCC = {"vp8": b"VP80", "vp09": b"VP90", "av01": b"AV01"}
WEBCODECS_PROBE = ["-probesize", "32"]
"""FFmpeg probes 5 MB of input before it decodes any: a WebCodecs stream of simple frames (a few
bytes to a few KB each) is then buffered whole and re-encoded only after the last capture. The
stream's first frame already says all FFmpeg needs, so it starts at once and encodes beside the
capture (same frames, same output; bench_canvas.py)."""


class FrameCapture(Protocol):
    """Seeks a frame and returns the bytes to pipe into FFmpeg for it."""

    description: str

    def ffmpeg_input(self) -> list[str]: ...

    def capture(self, index: int, frame: int, time_ms: float) -> bytes: ...

    def finish(self) -> bytes: ...


def seek_expression(frame: int, time_ms: float) -> str:
    return f"window.__helios_seek({frame}, {time_ms!r})"


CACHE_DROP_FRAMES = 20
"""A DOM capture has Chromium drop its caches every this many frames. What a page repaints every frame at a new
size or angle (a shadowed box that moves, scales or turns) leaves Skia a blur mask per frame in the renderer's
discardable memory, each drawn once: on the standard 1080p page they filled ~42 MB within 60 frames and stayed.
Dropped every 20 frames, a 1080p worker's peak PSS fell 626 -> 586-590 MB (as every 10), the frames byte-identical
and the frame rate within the machine's noise (benchmarks/README.md, "Chromium's caches")."""


@dataclass
class DomSeek:
    """A DOM capture's seek, which every ``every`` frames first has Chromium drop its caches: the critical
    memory-pressure signal empties them (Skia's, decoded images, fonts; the page's heap is collected). A cache is
    only a shortcut, so no pixel changes. A browser without DevTools' ``Memory`` domain keeps its caches."""

    cdp: CdpSession
    every: int = CACHE_DROP_FRAMES
    drops_caches: bool = True

    def seek(self, index: int, frame: int, time_ms: float) -> None:
        if self.drops_caches and index and index % self.every == 0:
            try:
                self.cdp.send("Memory.simulatePressureNotification", {"level": "critical"})
            except BrowserClosed:
                raise
            except CdpError:
                self.drops_caches = False
        evaluate(self.cdp, seek_expression(frame, time_ms), frame)


def image_input(spec: RenderSpec) -> list[str]:
    demuxer = ["-f", "mjpeg"] if spec.intermediate_image_format == "jpeg" else ["-f", "image2pipe", "-c:v", "png"]
    return [*demuxer, "-framerate", str(fps_fraction(spec.fps))]


def screenshot_parameters(spec: RenderSpec) -> dict[str, Any]:
    """The intermediate image's CDP parameters (format, JPEG quality), the same for both DOM capture paths."""
    params: dict[str, Any] = {"format": spec.intermediate_image_format, "optimizeForSpeed": True}
    if spec.intermediate_image_format == "jpeg":
        params["quality"] = spec.intermediate_image_quality
    return params


@dataclass
class DomCapture:
    """Seek, then a CDP screenshot of the viewport: the path where BeginFrame is unavailable."""

    spec: RenderSpec
    cdp: CdpSession
    description: str = "dom"
    screenshot_params: dict[str, Any] = field(default_factory=dict)
    """CDP ``Page.captureScreenshot`` parameters (image format, quality, optimizeForSpeed)."""
    seeker: DomSeek = field(init=False)

    def __post_init__(self) -> None:
        self.screenshot_params = screenshot_parameters(self.spec)
        self.seeker = DomSeek(self.cdp)
        self.description = f"dom/screenshot/{self.spec.intermediate_image_format}"
        if self.spec.has_alpha:
            # a transparent default background instead of white; PNG keeps the alpha
            transparent = {"color": {"r": 0, "g": 0, "b": 0, "a": 0}}
            self.cdp.send("Emulation.setDefaultBackgroundColorOverride", transparent)

    def ffmpeg_input(self) -> list[str]:
        return image_input(self.spec)

    def capture(self, index: int, frame: int, time_ms: float) -> bytes:
        self.seeker.seek(index, frame, time_ms)
        return base64.b64decode(self.cdp.send("Page.captureScreenshot", self.screenshot_params)["data"])

    def finish(self) -> bytes:
        return b""


def webcodecs_candidates(spec: RenderSpec) -> list[str]:
    if spec.intermediate_video_codec:
        wanted = spec.intermediate_video_codec
        return [CODEC_ALIASES.get(wanted, wanted)]
    return list(DEFAULT_CANDIDATES)


def intermediate_bitrate(spec: RenderSpec) -> int:
    """Generous: the intermediate stream is re-encoded (or kept, with ``video_codec: copy``)."""
    floor = int(spec.width * spec.height * spec.fps * 0.25)
    requested = _parse_bitrate(spec.video_bitrate) if spec.video_bitrate else 0
    return max(8_000_000, floor, requested)


def _parse_bitrate(text: str) -> int:
    units = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}
    text = text.strip().lower()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text))


def ivf_header(fourcc: bytes, spec: RenderSpec, frame_count: int) -> bytes:
    rate = fps_fraction(spec.fps)
    return struct.pack(
        "<4sHH4sHHIII4x", b"DKIF", 0, 32, fourcc, spec.width, spec.height, rate.numerator, rate.denominator, frame_count
    )


def webcodecs_input(spec: RenderSpec, codec: str) -> list[str]:
    """FFmpeg's input options for the in-page encoder's stream: raw H.264 (Annex B) or IVF."""
    if codec.startswith("avc1"):
        # raw H.264 has no timestamps: FFmpeg takes the frame rate from here
        return [*WEBCODECS_PROBE, "-f", "h264", "-framerate", str(fps_fraction(spec.fps))]
    return [*WEBCODECS_PROBE, "-f", "ivf"]


@dataclass
class CanvasCapture:
    """Canvas mode: WebCodecs in the page when possible, else the canvas as images."""

    spec: RenderSpec
    page: RenderPage
    frame_count: int
    cdp: CdpSession = field(init=False)
    description: str = "canvas"
    codec: str | None = None
    _index: int = 0
    _encoded: int = 0
    """Chunk-local frames already seeked and encoded (a call may encode several)."""

    def __post_init__(self) -> None:
        self.cdp = self.page.cdp
        self.page.evaluate(page_script("canvas_capture.js"))
        config = {
            "selector": self.spec.canvas_selector,
            "canvasTimeout": CANVAS_WAIT_MS,
            "width": self.spec.width,
            "height": self.spec.height,
            "fps": self.spec.fps,
            "bitrate": intermediate_bitrate(self.spec),
            "candidates": webcodecs_candidates(self.spec),
            # WebCodecs drops the canvas alpha: transparent renders capture the canvas as PNG
            "preference": "disabled" if self.spec.has_alpha else self.spec.web_codecs_preference,
            "imageFormat": self.spec.intermediate_image_format,
            "imageQuality": self.spec.intermediate_image_quality,
        }
        chosen = evaluate(self.cdp, f"window.__helios_canvas.setup({_js(config)})", None)
        if chosen["mode"] == "webcodecs":
            self.codec = str(chosen["codec"])
            self.description = f"canvas/webcodecs {self.codec} ({chosen.get('acceleration')})"
        else:
            if self.spec.video_codec == "copy":
                raise RenderError(
                    "video_codec 'copy' needs an in-page WebCodecs encoder, and none is usable here "
                    f"(web_codecs_preference={self.spec.web_codecs_preference}, candidates "
                    f"{', '.join(webcodecs_candidates(self.spec))})"
                )
            self.description = f"canvas/{self.spec.intermediate_image_format}"

    @property
    def _ivf_fourcc(self) -> bytes | None:
        if self.codec is None or self.codec.startswith("avc1"):
            return None
        return IVF_FOURCC[self.codec.split(".")[0]]

    def ffmpeg_input(self) -> list[str]:
        if self.codec is None:
            return image_input(self.spec)
        return webcodecs_input(self.spec, self.codec)

    def preamble(self) -> bytes:
        fourcc = self._ivf_fourcc
        return ivf_header(fourcc, self.spec, self.frame_count) if fourcc else b""

    def capture(self, index: int, frame: int, time_ms: float) -> bytes:
        """The bytes for chunk-local frame ``index``; with WebCodecs, the call for the first frame of
        a batch seeks and encodes the next frames too, and their own calls return nothing."""
        if self.codec is None:
            seek = seek_expression(frame, time_ms)
            return base64.b64decode(
                evaluate(self.cdp, f"(async () => {{ await {seek}; return window.__helios_canvas.image(); }})()", frame)
            )
        if index < self._encoded:
            return b""
        batch = [
            [local, frame + offset, frame_time_ms(frame + offset, self.spec.fps)]
            for offset, local in enumerate(range(index, min(self.frame_count, index + CANVAS_BATCH_FRAMES)))
        ]
        taken = evaluate(
            self.cdp, f"window.__helios_canvas.encodeFrames({_js(batch)}, {CANVAS_BATCH_BUDGET_MS})", frame
        )
        if failure := taken.get("failure"):
            raise PageError(seek_failure({"exception": {"description": failure["text"]}}), failure["frame"])
        self._encoded = index + int(taken["count"])
        return self._packets(taken)

    def finish(self) -> bytes:
        if self.codec is None:
            return b""
        return self._packets(evaluate(self.cdp, "window.__helios_canvas.finish()", None))

    def _packets(self, taken: dict[str, Any]) -> bytes:
        data = base64.b64decode(taken["data"]) if taken["data"] else b""
        if self._ivf_fourcc is None:
            return data
        out, offset = bytearray(), 0
        for size in taken["sizes"]:
            out += struct.pack("<IQ", size, self._index) + data[offset : offset + size]
            offset += size
            self._index += 1
        return bytes(out)


def _js(value: Any) -> str:
    import json

    return json.dumps(value)
