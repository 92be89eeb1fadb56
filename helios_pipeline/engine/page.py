"""A composition page ready to seek: a browser context of its own at the render's size, the seek driver
installed before any page script, the page loaded and checked, and its DevTools session to drive it.

Chunks, stills and the engine benchmark open pages the same way, so what is measured is what renders.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from helios_pipeline.engine.browser import Browser
from helios_pipeline.engine.cdp import CdpError, CdpSession
from helios_pipeline.engine.errors import PageError, RenderError
from helios_pipeline.engine.page_scripts import page_script
from helios_pipeline.spec import RenderSpec

DATE_EPOCH_MS = 1704067200000  # 2024-01-01T00:00:00Z, Helios's fixed Date.now() origin
LOAD_TIMEOUT_MS = 60000


def timeline_script(spec: RenderSpec) -> str:
    """The seek driver with this render's props, seed and timeouts filled in."""
    config = {
        "props": spec.input_props,
        "seed": spec.random_seed & 0xFFFFFFFF,
        "epoch": DATE_EPOCH_MS,
        "stabilityTimeout": spec.stability_timeout,
    }
    return page_script("timeline.js").replace("__HELIOS_CONFIG__", json.dumps(config))


def init_script(spec: RenderSpec) -> str:
    """What runs in the page before its own scripts: the shadow-root walk (shared by the seek driver
    and the media scan) and the seek driver. One script, so the walk is there before the driver."""
    return page_script("shadow_roots.js") + "\n" + timeline_script(spec)


def frame_time_ms(frame: int, fps: float) -> float:
    """The time of frame ``frame``, computed from the integer frame (never accumulated)."""
    return frame * 1000 / fps


def exception_text(details: dict[str, Any]) -> str:
    """The first line of what a page threw (``Runtime.ExceptionDetails``): ``Error: boom``."""
    exception = details.get("exception") or {}
    text = str(exception.get("description") or exception.get("value") or details.get("text") or "").strip()
    return text.splitlines()[0] if text else "unknown error"


def seek_failure(details: dict[str, Any]) -> str:
    """The page's own message for a failed call: a readiness timeout, or what the page threw."""
    first_line = exception_text(details)
    if first_line.startswith("HeliosFrameTimeout: "):
        return "did not become ready: " + first_line.removeprefix("HeliosFrameTimeout: ")
    return f"the page threw: {first_line}"


def evaluate(cdp: CdpSession, expression: str, frame: int | None) -> Any:
    """Run ``expression`` in the page (awaiting it); page exceptions become PageError for ``frame``."""
    reply = cdp.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
    if "exceptionDetails" in reply:
        raise PageError(seek_failure(reply["exceptionDetails"]), frame)
    return reply.get("result", {}).get("value")


@dataclass
class RenderPage:
    """One composition page: its session, and what it threw or crashed with (recorded by the reader thread)."""

    cdp: CdpSession
    errors: list[str] = field(default_factory=list)
    """What the page threw ("the page threw: ...") or that it crashed, in order."""
    _loaded: set[str] = field(default_factory=set)
    """Loaders (documents) whose load event has fired."""
    _statuses: dict[str, int] = field(default_factory=dict)
    """Each loader's HTTP status."""
    _changed: threading.Condition = field(default_factory=threading.Condition)
    child_watchers: list[Callable[[CdpSession], None]] = field(default_factory=list)
    """Called (on the reader thread) with the session of each worker or out-of-process frame the page starts,
    before it runs: they may register handlers and ``post`` commands."""

    def evaluate(self, expression: str, frame: int | None = None) -> Any:
        """The value of ``expression`` (a promise is awaited); what it throws is a ``PageError`` for ``frame``."""
        return evaluate(self.cdp, expression, frame)

    def call(self, function: str, *args: Any) -> Any:
        """``function`` (a JavaScript function expression) called with ``args`` (as JSON), its promise awaited."""
        return self.evaluate(f"({function})(...{json.dumps(list(args))})")

    def wait_for_load(self, loader_id: str, timeout: float) -> str | None:
        """Wait until the document ``loader_id`` has fired its load event; else why not (crash, browser gone)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while loader_id not in self._loaded:
                if "the page crashed" in self.errors:
                    return "the page crashed"
                if self.cdp.connection.closed.is_set():
                    return "the browser closed"
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"no load event within {timeout:.0f} s"
                self._changed.wait(min(left, 0.25))
        return None

    def _attached(self, params: dict[str, Any]) -> None:
        """A worker or out-of-process frame of the page, paused until its watchers have subscribed."""
        child = CdpSession(self.cdp.connection, str(params["sessionId"]))
        for watch in self.child_watchers:
            watch(child)
        child.post("Runtime.runIfWaitingForDebugger")

    def _threw(self, params: dict[str, Any]) -> None:
        self.errors.append(f"the page threw: {exception_text(params.get('exceptionDetails') or {})}")

    def _crashed(self, _params: dict[str, Any]) -> None:
        self.errors.append("the page crashed")
        self.cdp.connection.fail_session(self.cdp.session_id, "the page crashed")
        with self._changed:
            self._changed.notify_all()

    def _lifecycle(self, params: dict[str, Any]) -> None:
        if params.get("name") == "load":
            with self._changed:
                self._loaded.add(str(params.get("loaderId")))
                self._changed.notify_all()

    def _response(self, params: dict[str, Any]) -> None:
        if params.get("type") == "Document" and params.get("requestId") == params.get("loaderId"):
            self._statuses[str(params.get("loaderId"))] = int(params.get("response", {}).get("status") or 0)


def new_render_page(browser: Browser, spec: RenderSpec, proxy: str | None = None) -> RenderPage:
    """A page at the render's size with the seek driver installed, recording what it throws.

    ``proxy`` is the chunk's egress gate (``engine.page_network``): every connection of the page goes through it.
    """
    cdp = browser.open_page(spec.width, spec.height, proxy)
    page = RenderPage(cdp)
    cdp.on("Runtime.exceptionThrown", page._threw)
    cdp.on("Inspector.targetCrashed", page._crashed)
    cdp.on("Network.responseReceived", page._response)
    cdp.on("Page.lifecycleEvent", page._lifecycle)
    cdp.on("Target.attachedToTarget", page._attached)
    for domain in ("Page", "Runtime", "Network", "Inspector"):
        cdp.send(f"{domain}.enable")
    cdp.send("Page.setLifecycleEventsEnabled", {"enabled": True})
    cdp.send("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True})
    cdp.send("Page.addScriptToEvaluateOnNewDocument", {"source": init_script(spec)})
    return page


def load_composition(page: RenderPage, url: str, spec: RenderSpec) -> None:
    """Load ``url`` and wait for its load event; a failed load or a throwing page raises, naming the composition."""
    started = time.monotonic()
    try:
        navigated = page.cdp.send("Page.navigate", {"url": url}, timeout=LOAD_TIMEOUT_MS / 1000)
    except CdpError as exc:
        raise RenderError(f"could not load {spec.composition}: {exc.message}") from None
    if error := navigated.get("errorText"):
        raise RenderError(f"could not load {spec.composition}: {error} at {url}")
    loader = str(navigated.get("loaderId"))
    if why := page.wait_for_load(loader, LOAD_TIMEOUT_MS / 1000 - (time.monotonic() - started)):
        raise RenderError(f"could not load {spec.composition}: {why}")
    if (status := page._statuses.get(loader, 0)) >= 400:
        raise RenderError(f"could not load {spec.composition}: HTTP {status}")
    if page.errors:
        raise PageError(f"while loading {spec.composition}: {page.errors[0]}")
