"""Chromium launch: one headless browser per chunk, flags chosen for determinism and a closed network."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator

import psutil
from playwright.sync_api import Browser, Playwright

from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.tools import chromium_path

LAUNCH_ARGS = (
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--hide-scrollbars",
    "--disable-lcd-text",
    "--font-render-hinting=none",
    "--force-color-profile=srgb",
    "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-features=PaintHolding,Translate,MediaRouter,OptimizationHints",
    "--autoplay-policy=no-user-gesture-required",
    # WebRTC may send UDP, which no proxy sees: keep it to proxied connections (the network policy's gate)
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
)

BEGIN_FRAME_ARGS = (
    # chromium-headless-shell draws a frame only when HeadlessExperimental.beginFrame asks for one, and then
    # runs every compositor stage before drawing it: the frame's screenshot shows the DOM as seeked.
    # Browsers without BeginFrame (new headless) ignore these switches and keep drawing on their own.
    "--deterministic-mode",
    "--enable-begin-frame-control",
    "--run-all-compositor-stages-before-draw",
    "--disable-new-content-rendering-timeout",
    "--disable-threaded-animation",
    "--disable-threaded-scrolling",
    "--disable-checker-imaging",
)

LAUNCH_TIMEOUT_MS = 30000
"""How long Chromium may take to start and answer Playwright; past it Playwright kills it and the chunk fails."""

LAUNCH_MARKER = "--helios-launch-id"
"""A switch Chromium ignores; its unique value tells one chunk's browser from another's in one process."""
_LAUNCHED: dict[int, psutil.Process] = {}
_LOCK = threading.Lock()


def launch_args(begin_frame_control: bool = False) -> list[str]:
    """Chromium's switches; ``begin_frame_control`` adds ``BEGIN_FRAME_ARGS`` (DOM capture by BeginFrame)."""
    args = list(LAUNCH_ARGS)
    if begin_frame_control:
        args.extend(BEGIN_FRAME_ARGS)
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to start its sandbox as root
    return args


@contextlib.contextmanager
def launch_browser(playwright: Playwright, *, begin_frame_control: bool = False) -> Iterator[Browser]:
    """Launch Chromium headless and always close it, even when the chunk fails.

    With ``begin_frame_control`` a headless-shell renders nothing until BeginFrame asks: only for pages
    captured with ``engine.begin_frame.BeginFrameCapture`` (which falls back to screenshots elsewhere).

    The launch carries a unique marker switch (Chromium ignores unknown switches) so that
    ``browser_process`` can find this browser's own process among the caller's children.
    """
    marker = f"{LAUNCH_MARKER}={uuid.uuid4().hex}"
    browser = playwright.chromium.launch(
        executable_path=chromium_path(), headless=True, args=[*launch_args(begin_frame_control), marker],
        timeout=LAUNCH_TIMEOUT_MS,
        handle_sigint=False, handle_sigterm=False, handle_sighup=False,
    )  # fmt: skip
    try:
        with _LOCK:
            _LAUNCHED[id(browser)] = _find_process(marker)
        yield browser
    finally:
        with contextlib.suppress(Exception):
            browser.close()
        with _LOCK:
            _LAUNCHED.pop(id(browser), None)


def _find_process(marker: str) -> psutil.Process:
    """The launched browser's main process: the caller's descendant whose command line has ``marker``."""
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if marker in process.cmdline():
                return process
    raise RenderError(f"Chromium ({chromium_path()}) started, but no process with its launch switch {marker} was found")


def browser_process(browser: Browser) -> psutil.Process | None:
    """The main process of an open browser started by ``launch_browser`` (renderers are its descendants)."""
    with _LOCK:
        return _LAUNCHED.get(id(browser))
