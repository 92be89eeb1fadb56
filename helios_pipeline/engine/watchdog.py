"""The chunk watchdog: every blocking browser call of a chunk ends within a known time.

DevTools calls into a page (``Runtime.evaluate``, screenshots, new pages) have no time-out of
their own, and a page's in-page bound (``stability_timeout``) cannot fire when its main thread never
yields or when Chromium stops answering. The watchdog is armed around each such call with a limit
(the page's own bound plus a margin); past it, it kills this chunk's browser tree, which makes the
blocked call fail, and records *why* it fired so the chunk can say whose fault it was:

- the page's renderer was busy (it burnt CPU while stuck): the composition's own code holds the
  main thread, which will happen again on a retry -> :class:`PageError`, not retried;
- otherwise (browser processes stopped, or idle without answering): Chromium stopped answering,
  which a fresh browser may not do -> :class:`StuckError`, retried.

A killed browser closes its end of the DevTools pipe, which fails every call still waiting (``engine.cdp``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from helios_pipeline.engine.browser import Browser, browser_process, launch_browser
from helios_pipeline.engine.cdp import CdpError
from helios_pipeline.engine.errors import PageError, RenderError, StuckError
from helios_pipeline.engine.page import LOAD_TIMEOUT_MS
from helios_pipeline.spec import RenderSpec

if TYPE_CHECKING:  # page_network imports the engine's page set-up; only the type is needed here
    from helios_pipeline.engine.page import RenderPage
    from helios_pipeline.engine.page_network import PageNetwork

WATCHDOG_MARGIN_S = 15.0
"""Seconds beyond the page's own bound (``stability_timeout``, the load time-out) before the watchdog fires."""
BUSY_SAMPLE_S = 2.0
"""How long the watchdog watches the renderer's CPU before it kills a stuck browser."""
BUSY_CPU_SHARE = 0.1
"""A renderer using at least this share of one core while stuck is running the page's code (a loop)."""
POLL_S = 0.25


def frame_limit(spec: RenderSpec) -> float:
    """Seconds one frame's seek, readiness wait and capture may take before the watchdog fires."""
    return spec.stability_timeout / 1000 + WATCHDOG_MARGIN_S


def load_limit() -> float:
    """Seconds opening and loading the page (and scanning its media) may take before the watchdog fires."""
    return LOAD_TIMEOUT_MS / 1000 + WATCHDOG_MARGIN_S


@dataclass(frozen=True)
class Stall:
    """What the watchdog saw when it fired: what was being waited for, and the browser's state."""

    doing: str
    limit: float
    page_busy: bool
    """The renderer kept using CPU: the page's own code never yielded."""
    stopped: int
    """How many of the browser's processes were stopped (SIGSTOP, a debugger)."""

    def error(self, frame: int | None) -> RenderError:
        """The chunk's error: the page's fault (not retried), or Chromium's (retried)."""
        if self.page_busy and not self.stopped:
            if frame is not None:
                return PageError(
                    f"did not become ready within {self.limit:.0f} s: the page's main thread never yielded "
                    "(the page is stuck)",
                    frame,
                )
            return PageError(
                f"stuck while {self.doing}: no reply within {self.limit:.0f} s, the page's main thread never yielded"
            )
        state = f"{self.stopped} of its processes were stopped" if self.stopped else "it was idle"
        return StuckError(
            f"Chromium stopped answering while {self.doing} (no reply within {self.limit:.0f} s, {state}); "
            "its browser was killed",
            frame,
        )


class Watchdog:
    """Kills this chunk's Chromium when a watched call outlives its limit, so a stuck chunk fails instead of waiting.

    Only the browser given to ``watch`` dies: chunks rendering as threads of one process keep theirs.
    """

    def __init__(self, cancel: threading.Event | None = None) -> None:
        """``cancel``: once set, the browser is killed at once, so a chunk rendering in its caller's process
        stops as promptly as a worker process killed whole (a page load or a frame can take a minute)."""
        self.stall: Stall | None = None
        self._cancel = cancel
        self.cancelled = False
        self._browser: Browser | None = None
        self._deadline: float | None = None
        self._limit = 0.0
        self._doing = ""
        self._closing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="helios-watchdog", daemon=True)
        self._thread.start()

    @property
    def fired(self) -> bool:
        return self.stall is not None

    def watch(self, browser: Browser) -> None:
        self._browser = browser

    def arm(self, limit: float, doing: str) -> None:
        """Start the clock for the next blocking call(s): ``doing`` names them in the error ("capturing the frame")."""
        self._limit, self._doing = limit, doing
        self._deadline = time.monotonic() + limit

    def disarm(self) -> None:
        """The watched calls returned (the chunk is back in control): stop the clock."""
        self._deadline = None

    def guard_close(self, limit: float) -> None:
        """Bound closing the browser: past ``limit`` it is killed, which is no failure of the chunk."""
        self._closing = True
        self.arm(limit, "closing the browser")

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            now = time.monotonic()
            if self._cancel is not None and self._cancel.is_set() and not self.cancelled and self._browser is not None:
                self.cancelled = True
                self._deadline = None
                self._end_browser()
            elif self._deadline is not None and now > self._deadline:
                self._deadline = None
                self._fire()

    def _fire(self) -> None:
        browser = self._browser
        if browser is None or browser_process(browser) is None:
            if not self._closing:
                self.stall = Stall(self._doing, self._limit, page_busy=False, stopped=0)
            if browser is not None:
                browser.kill()  # what is left of it (a wrapper script holding its pipe)
            return
        if self._closing:  # the chunk's work is done or already failed: only end the browser
            browser.kill()
            return
        tree = browser.processes()
        stopped = sum(1 for process in tree if _status(process) == psutil.STATUS_STOPPED)
        busy = not stopped and _renderer_busy(tree)
        self.stall = Stall(self._doing, self._limit, page_busy=busy, stopped=stopped)
        browser.kill()

    def _end_browser(self) -> None:
        """Kill the watched browser (cancelled: nothing to diagnose)."""
        if self._browser is not None:
            self._browser.kill()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def _status(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return process.status()
    return ""


def _renderer_busy(tree: list[psutil.Process]) -> bool:
    """Did a renderer of ``tree`` use at least ``BUSY_CPU_SHARE`` of a core over ``BUSY_SAMPLE_S``?"""
    renderers = []
    for process in tree:
        with contextlib.suppress(psutil.Error):
            if "--type=renderer" in process.cmdline():
                renderers.append(process)
    before = {process.pid: _cpu(process) for process in renderers}
    time.sleep(BUSY_SAMPLE_S)
    return any(_cpu(process) - before[process.pid] >= BUSY_CPU_SHARE * BUSY_SAMPLE_S for process in renderers)


def _cpu(process: psutil.Process) -> float:
    with contextlib.suppress(psutil.Error):
        times = process.cpu_times()
        return times.user + times.system
    return 0.0


@contextlib.contextmanager
def watched_browser(
    watchdog: Watchdog, *, begin_frame_control: bool = False, started: Browser | None = None
) -> Iterator[Browser]:
    """A chunk's or a still's Chromium under ``watchdog``, whose clock also bounds closing it (a stopped browser
    never closes); a stuck ``HeadlessExperimental.beginFrame`` is bounded like any other capture call. ``started``:
    a browser launched ahead for this chunk (with ``begin_frame_control`` as asked), closed like its own."""
    try:
        with launch_browser(begin_frame_control=begin_frame_control, started=started) as browser:
            watchdog.watch(browser)
            try:
                yield browser
            finally:
                watchdog.guard_close(load_limit())
    finally:
        watchdog.disarm()


def browser_call_failure(
    exc: CdpError | RenderError,
    *,
    watchdog: Watchdog,
    gate: PageNetwork | None,
    page: RenderPage | None,
    frame: int | None,
    what: str,
) -> BaseException:
    """What a chunk or a still raises when a browser call failed: the watchdog's reason when it killed the
    browser, the page's own error (with the network refusal behind it), else the browser's failure."""
    if watchdog.stall is not None:  # the watchdog killed the browser: say why, not how the call broke
        return watchdog.stall.error(frame)
    if isinstance(exc, PageError):
        return exc if gate is None else gate.explain(exc)
    if not isinstance(exc, CdpError):
        return exc
    if page is not None and page.errors:
        error = PageError(page.errors[0], frame)
        return error if gate is None else gate.explain(error)
    return RenderError(f"{what}: browser failed: {exc.message.splitlines()[0]}")
