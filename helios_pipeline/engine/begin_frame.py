"""DOM capture by BeginFrame: the frame that draws the seeked DOM also takes its screenshot.

On ``chromium-headless-shell`` launched with ``engine.browser.BEGIN_FRAME_ARGS`` the page draws
nothing on its own: each ``HeadlessExperimental.beginFrame`` runs the whole rendering pipeline once
(style, layout, paint, raster, draw) and returns that frame's screenshot. One CDP call instead of
``Page.captureScreenshot``'s wait for the next frame, and no frame can show a state between seeks.

Browsers without it (new headless Chromium, a full ``chromium`` binary) refuse the command; the
probe in ``dom_capture`` then keeps the screenshot path (``capture.DomCapture``). Which one rendered
is the capture's ``description``, recorded with every chunk and still.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from helios_pipeline.engine.capture import DomCapture, DomSeek, FrameCapture, image_input, screenshot_parameters
from helios_pipeline.engine.capture_setting import dom_capture_choice
from helios_pipeline.engine.cdp import CdpError, CdpSession
from helios_pipeline.engine.errors import RenderError
from helios_pipeline.spec import RenderSpec

BEGIN_FRAME = "HeadlessExperimental.beginFrame"
MAX_UNDRAWN_FRAMES = 10
"""BeginFrames in a row that may come back without a screenshot before the capture gives up."""


def wants_begin_frame(spec: RenderSpec) -> bool:
    """Launch for BeginFrame? DOM mode only (canvas mode reads the canvas in the page, drawn or not),
    unless ``HELIOS_DOM_CAPTURE=screenshot``."""
    return spec.mode == "dom" and dom_capture_choice() == "auto"


def begin_frame_available(cdp: CdpSession, params: dict[str, Any]) -> bool:
    """Probe: does this page take BeginFrames? Chromium answers "wasn't found" (new headless) or "only
    supported with --run-all-compositor-stages-before-draw" (headless-shell launched without control) when not.

    The probe frame is drawn with a screenshot, discarded: after the page's load (and the resize to the render's
    size) the first frames may draw nothing, and the first captured frame must not be one of them.
    """
    try:
        draw_screenshot(cdp, params, None)
    except CdpError:
        return False
    return True


def draw_screenshot(cdp: CdpSession, params: dict[str, Any], frame: int | None) -> bytes:
    """One BeginFrame's screenshot. A frame the compositor could not draw yet (no screenshot: the first
    frames after a navigation or resize) is drawn again: the DOM has not changed, so neither does the picture."""
    for _ in range(MAX_UNDRAWN_FRAMES):
        data = cdp.send(BEGIN_FRAME, params).get("screenshotData")
        if data:
            return base64.b64decode(data)
    where = "the first frame" if frame is None else f"frame {frame}"
    raise RenderError(f"{where}: {MAX_UNDRAWN_FRAMES} BeginFrames in a row drew no screenshot")


@dataclass
class BeginFrameCapture:
    """Seek, then one BeginFrame whose screenshot is the frame (same image parameters as the screenshot path)."""

    spec: RenderSpec
    cdp: CdpSession
    description: str = "dom/beginframe"
    frame_params: dict[str, Any] = field(default_factory=dict)
    """``HeadlessExperimental.beginFrame`` parameters: the screenshot's format, quality, optimizeForSpeed."""
    seeker: DomSeek = field(init=False)

    def __post_init__(self) -> None:
        self.frame_params = {"screenshot": screenshot_parameters(self.spec)}
        self.seeker = DomSeek(self.cdp)
        self.description = f"dom/beginframe/{self.spec.intermediate_image_format}"

    def ffmpeg_input(self) -> list[str]:
        return image_input(self.spec)

    def capture(self, index: int, frame: int, time_ms: float) -> bytes:
        self.seeker.seek(index, frame, time_ms)
        return draw_screenshot(self.cdp, self.frame_params, frame)

    def finish(self) -> bytes:
        return b""


def dom_capture(spec: RenderSpec, cdp: CdpSession) -> FrameCapture:
    """BeginFrame where the page takes it, else the screenshot path; the transparent background either way."""
    screenshot = DomCapture(spec, cdp)  # sets the background override, which BeginFrame's frames use too
    if wants_begin_frame(spec):
        begin_frame = BeginFrameCapture(spec, cdp)
        if begin_frame_available(cdp, begin_frame.frame_params):
            return begin_frame
    return screenshot
