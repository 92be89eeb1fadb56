"""Chromium launch: one headless browser per chunk, flags chosen for determinism and a closed network, driven
over its DevTools pipe (``engine.cdp``) with no driver process in between."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from helios_pipeline.engine.cdp import CdpConnection, CdpError, CdpSession
from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.tools import chromium_path
from helios_pipeline.processes import child_env, end_within, process_tree, start_group
from helios_pipeline.scratch import BROWSER_TEMP_PREFIX, process_folder

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
    # what a browser under automation needs (the switches Playwright launched chunks with until 2026-12-02): no
    # field trials, extensions, crash reporter, hang monitor, keychain or throttling of the many DevTools messages
    "--disable-field-trial-config",
    "--disable-back-forward-cache",
    "--disable-breakpad",
    "--disable-component-extensions-with-background-pages",
    "--disable-default-apps",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-hang-monitor",
    "--disable-ipc-flooding-protection",
    "--disable-popup-blocking",
    "--disable-prompt-on-repost",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
    "--no-service-autorun",
    "--enable-unsafe-swiftshader",  # WebGL pages draw in software
    "--enable-features=CDPScreenshotNewSurface",
    # a page's CSS sees a device without hover and with a coarse pointer, as it did under Playwright
    "--blink-settings=primaryHoverType=2,availableHoverTypes=2,primaryPointerType=4,availablePointerTypes=4",
    "--headless",
    "--no-startup-window",  # no first tab: each page is a target of its own browser context
)

DISABLED_FEATURES = ("PaintHolding", "Translate", "MediaRouter", "OptimizationHints")

# Memory flags: none so far. benchmarks/bench_memory.py measures candidates (PSS by Chromium process
# type, frames compared byte for byte); at 1080p none of --in-process-gpu, --no-zygote,
# --renderer-process-limit=1, site isolation off, V8 heap limits or lite mode, small caches, one raster
# thread saved more than the run-to-run spread (+-50 MB), and --single-process and
# --force-gpu-mem-available-mb change pixels (benchmarks/README.md). Add a flag here only with its figure.
MEMORY_ARGS: tuple[str, ...] = ()
MEMORY_DISABLED_FEATURES: tuple[str, ...] = ()

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


LAUNCH_TIMEOUT_S = 30.0
"""How long Chromium may take to start and answer its first command; past it the launch fails."""

CLOSE_GRACE_SECONDS = 3.0
"""How long a closing browser gets to end by itself before its processes are killed: it writes its profile while
it ends, and its folder is removed after."""

LOG_TAIL_LINES = 5
"""Lines of Chromium's own output quoted when it fails to start."""


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


@dataclass
class Browser:
    """A running Chromium: its process, the DevTools connection to it, and its own temporary folder."""

    process: subprocess.Popen
    """What was started: Chromium itself, or a wrapper script that runs it as its child (Debian's /usr/bin ones)."""
    connection: CdpConnection
    folder: Path
    version: str = ""
    """Chromium's version number (``Browser.getVersion``), recorded with every chunk."""
    main: psutil.Process | None = None
    """Chromium's browser process (its renderers, GPU and utility processes are its descendants)."""
    begin_frame_control: bool = False
    """Launched with ``BEGIN_FRAME_ARGS``: it draws only when BeginFrame asks (DOM capture), never on its own."""

    @property
    def pid(self) -> int:
        return self.main.pid if self.main is not None else self.process.pid

    def open_page(self, width: int, height: int, proxy: str | None = None) -> CdpSession:
        """A new page in a browser context of its own (``proxy``: every connection of it goes there, loopback
        included), at ``width`` x ``height`` CSS pixels, device scale 1; its session is attached, nothing enabled."""
        context: dict[str, object] = {"disposeOnDetach": True}
        if proxy is not None:
            context |= {"proxyServer": proxy, "proxyBypassList": "<-loopback>"}
        context_id = self.connection.send("Target.createBrowserContext", context)["browserContextId"]
        target = self.connection.send("Target.createTarget", {"url": "about:blank", "browserContextId": context_id})
        attached = self.connection.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = CdpSession(self.connection, attached["sessionId"])
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        page.send("Emulation.setDeviceMetricsOverride", {**metrics, "screenWidth": width, "screenHeight": height})
        page.send("Emulation.setFocusEmulationEnabled", {"enabled": True})  # the page has focus, as a visible tab
        return page

    def processes(self) -> list[psutil.Process]:
        """Every process of this browser now: what was started (a wrapper script, maybe) and Chromium's tree."""
        found = {process.pid: process for process in process_tree(self.process.pid)}
        if self.main is not None:
            found |= {process.pid: process for process in process_tree(self.main.pid)}
        return list(found.values())

    def kill(self) -> None:
        """SIGKILL every process of this browser, a wrapper script included: it holds the DevTools pipe open too,
        and a waiting call fails only once every holder is gone."""
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                process.kill()

    def close(self) -> None:
        """Ask Chromium to close, kill what is left after ``CLOSE_GRACE_SECONDS``, remove its folder."""
        tree = self.processes()
        if not self.connection.closed.is_set():
            with contextlib.suppress(CdpError):
                self.connection.send("Browser.close", timeout=CLOSE_GRACE_SECONDS)
        end_within(tree, CLOSE_GRACE_SECONDS)
        self.process.wait()
        self.connection.close()  # its reader has seen the pipe end with the browser
        shutil.rmtree(self.folder, ignore_errors=True)


def _high(fd: int) -> int:
    """``fd`` moved above the numbers the child is given (3, 4), so that giving them cannot close it."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def _start(folder: Path, args: list[str], begin_frame_control: bool) -> Browser:
    """Start Chromium with its DevTools pipe (its fd 3 reads our commands, its fd 4 writes its answers)."""
    commands_read, commands_write = (_high(fd) for fd in os.pipe())
    answers_read, answers_write = (_high(fd) for fd in os.pipe())
    log_path = folder / "chromium.log"
    command = [
        chromium_path(), *args, f"--user-data-dir={folder / 'profile'}",
        "--remote-debugging-pipe",
    ]  # fmt: skip
    env = {**(child_env() or os.environ), "TMPDIR": str(folder)}  # Chromium's own temporary files go with it
    try:
        with open(log_path, "wb") as log:
            process = start_group(
                command, term_with_parent=True, fds={3: commands_read, 4: answers_write}, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
    except OSError as exc:
        for fd in (commands_read, commands_write, answers_read, answers_write):
            os.close(fd)
        raise RenderError(f"could not start Chromium ({command[0]}): {exc}") from None
    os.close(commands_read)
    os.close(answers_write)
    browser = Browser(
        process, CdpConnection(commands_write, answers_read), folder, begin_frame_control=begin_frame_control
    )
    try:
        product = browser.connection.send("Browser.getVersion", timeout=LAUNCH_TIMEOUT_S)["product"]
    except CdpError as exc:
        said = _log_tail(log_path)  # before the folder goes
        browser.close()
        raise RenderError(f"Chromium ({command[0]}) did not start: {said or exc.message}") from None
    browser.version = str(product).rpartition("/")[2]
    browser.main = _main_process(process.pid)
    return browser


def _main_process(pid: int) -> psutil.Process | None:
    """The browser process in the tree of ``pid``: the deepest with the pipe switch that is no helper (``--type=``);
    a wrapper script running Chromium has the switch in its command line too, as its parent."""
    found = None
    for process in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            command = process.cmdline()
            if "--remote-debugging-pipe" in command and not any(arg.startswith("--type=") for arg in command):
                found = process
    return found


def _log_tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return " | ".join(lines[-LOG_TAIL_LINES:])
    return ""


def start_browser(*, begin_frame_control: bool = False, args: list[str] | None = None) -> Browser:
    """Launch Chromium headless; the caller closes it (``launch_browser`` does, however the block ends).

    With ``begin_frame_control`` a headless-shell renders nothing until BeginFrame asks: only for pages
    captured with ``engine.begin_frame.BeginFrameCapture`` (which falls back to screenshots elsewhere).
    Its profile and temporary files live in a folder of this process's (``scratch.process_folder``), removed
    when it closes, or by the next launch on the host when this process was killed outright. ``args`` replace
    ``launch_args`` (benchmarks of other flags). The browser gets the parent-death signal of the launching
    *thread*: launch it on the thread that outlives its use.
    """
    folder = process_folder(BROWSER_TEMP_PREFIX)
    try:
        return _start(folder, launch_args(begin_frame_control) if args is None else args, begin_frame_control)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


@contextlib.contextmanager
def launch_browser(
    *, begin_frame_control: bool = False, args: list[str] | None = None, started: Browser | None = None
) -> Iterator[Browser]:
    """``start_browser``'s browser, or ``started`` (one the caller launched ahead, handed over), always closed at
    the end of the block, even when the chunk fails."""
    browser = started if started is not None else start_browser(begin_frame_control=begin_frame_control, args=args)
    try:
        yield browser
    finally:
        browser.close()


def browser_process(browser: Browser) -> psutil.Process | None:
    """The browser process of an open browser (renderers are its descendants), None once it has ended."""
    main = browser.main
    with contextlib.suppress(psutil.Error):
        if main is not None and main.is_running() and main.status() != psutil.STATUS_ZOMBIE:
            return main
    return None
