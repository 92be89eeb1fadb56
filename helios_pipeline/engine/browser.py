"""Chromium launch: one headless browser per chunk, flags chosen for determinism and a closed network;
Playwright's node driver started with a small young generation."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import Iterator

import psutil
from playwright.sync_api import Browser, Playwright, sync_playwright

from helios_pipeline.engine.driver_cache import enable_node_compile_cache
from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.tools import chromium_path
from helios_pipeline.processes import child_env, end_within, process_tree, thread_tags
from helios_pipeline.scratch import DRIVER_TEMP_PREFIX, process_folder

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
    "--autoplay-policy=no-user-gesture-required",
    # WebRTC may send UDP, which no proxy sees: keep it to proxied connections (the network policy's gate)
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
)

DISABLED_FEATURES = ("PaintHolding", "Translate", "MediaRouter", "OptimizationHints")

# Memory flags: none so far. benchmarks/bench_memory.py measures candidates (PSS by Chromium process
# type, frames compared byte for byte); at 1080p none of --in-process-gpu, --no-zygote,
# --renderer-process-limit=1, site isolation off, V8 heap limits or lite mode, small caches, one raster
# thread saved more than the run-to-run spread (+-50 MB), and --single-process and
# --force-gpu-mem-available-mb change pixels (benchmarks/README.md). Add a flag here only with its figure.
MEMORY_ARGS: tuple[str, ...] = ()
MEMORY_DISABLED_FEATURES: tuple[str, ...] = ()

DRIVER_NODE_OPTIONS = ("--max-semi-space-size=1",)
"""V8 options for Playwright's node driver. Every screenshot passes through it as a base64 string (~0.3 MB
at 1080p), which fills V8's default 16 MB semi-spaces between scavenges: with 1 MB ones the driver
holds ~30-40 MB less (peak PSS per 1080p chunk worker: driver 116 -> 84 MB, benchmarks/README.md) and
relays the same bytes."""
_ENVIRON_LOCK = threading.Lock()

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

CLOSE_GRACE_SECONDS = 3.0
"""How long a browser whose driver is gone (Playwright cannot close it) gets to end by itself once it has lost its
pipe, before it is killed: while it ends, it writes into its profile folder, which the driver's folder holds."""

LAUNCH_MARKER = "--helios-launch-id"
"""A switch Chromium ignores; its unique value tells one chunk's browser from another's in one process."""
_LAUNCHED: dict[int, psutil.Process] = {}
_LOCK = threading.Lock()


def launch_args(begin_frame_control: bool = False, *, memory: bool = True) -> list[str]:
    """Chromium's switches for a chunk: ``begin_frame_control`` adds ``BEGIN_FRAME_ARGS`` (DOM capture by
    BeginFrame); ``memory=False`` leaves out the memory flags (for benchmarks).

    Chromium keeps only the last ``--disable-features`` switch, so every disabled feature goes into one.
    """
    features = [*DISABLED_FEATURES, *(MEMORY_DISABLED_FEATURES if memory else ())]
    args = [*LAUNCH_ARGS, *(MEMORY_ARGS if memory else ()), "--disable-features=" + ",".join(features)]
    if begin_frame_control:
        args.extend(BEGIN_FRAME_ARGS)
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to start its sandbox as root
    return args


def launch_playwright() -> Playwright:
    """``sync_playwright().start()`` with the driver's compile cache and ``DRIVER_NODE_OPTIONS``; the caller stops it.

    Playwright gives its driver a copy of this process's environment when it starts, and has no other
    way in: ``NODE_OPTIONS`` (other ``NODE_OPTIONS`` kept), ``TMPDIR`` (see ``DRIVER_TEMP_PREFIX``) and this
    thread's ``tag_children`` variables are set for the moment of the start only.
    """
    enable_node_compile_cache()
    scratch = str(process_folder(DRIVER_TEMP_PREFIX))  # before TMPDIR changes: tempfile keeps the real one
    with _ENVIRON_LOCK:
        options = " ".join(filter(None, (os.environ.get("NODE_OPTIONS"), *DRIVER_NODE_OPTIONS)))
        changed = {"NODE_OPTIONS": options, "TMPDIR": scratch, **thread_tags()}  # tags: see processes.tag_children
        saved = {name: os.environ.get(name) for name in changed}
        os.environ.update(changed)
        try:
            playwright = sync_playwright().start()
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    stop = playwright.stop

    def stop_then_remove_scratch() -> None:
        try:
            stop()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    playwright.stop = stop_then_remove_scratch  # type: ignore[method-assign]  (Playwright sets it the same way)
    return playwright


@contextlib.contextmanager
def start_playwright(started: Playwright | None = None) -> Iterator[Playwright]:
    """A Playwright for one chunk or still: ``started`` (the caller's, left running) or one of its own."""
    if started is not None:
        yield started
        return
    playwright = launch_playwright()
    try:
        yield playwright
    finally:
        playwright.stop()


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
        timeout=LAUNCH_TIMEOUT_MS, env=child_env(),
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
            launched = _LAUNCHED.pop(id(browser), None)
        if launched is not None:
            _wait_until_gone(launched)


def _wait_until_gone(browser: psutil.Process) -> None:
    """Return once the browser's processes have ended, killing them past ``CLOSE_GRACE_SECONDS``. Playwright's
    close waits for them, but fails at once when the driver is gone (a SIGTERM to the run worker's group reaches
    it too): the driver's folder removed then, the ending browser wrote its profile into it again."""
    end_within(process_tree(browser.pid) if browser.is_running() else [], CLOSE_GRACE_SECONDS)


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
