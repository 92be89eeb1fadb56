"""The Chrome DevTools Protocol over the pipe of a Chromium this process started (``--remote-debugging-pipe``).

The engine speaks to its browser directly: no driver process relays the calls. Playwright's Node driver held
~100 MB of each chunk worker's memory before the first frame (benchmarks/README.md), and every frame crossed it
twice. Messages are JSON, each ended by a NUL byte, on two pipes (Chromium reads fd 3, writes fd 4).

A reader thread parses what the browser writes: replies wake their caller, events go to the handlers registered
with ``on``. Handlers run on the reader thread, so they must only record (append, set) or ``post`` (send without
waiting): a handler that waited for a reply would wait for what only its own thread can read.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EventHandler = Callable[[dict[str, Any]], None]
READ_BLOCK = 1 << 20


class CdpError(Exception):
    """A command the browser refused or could not answer; ``message`` says which and why."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


class BrowserClosed(CdpError):
    """The browser's pipe ended (it exited, crashed or was killed) before a command was answered."""


@dataclass
class _Call:
    method: str
    session_id: str | None
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: CdpError | None = None


class CdpConnection:
    """Commands and events over the browser's two pipe ends (``to_browser`` written, ``from_browser`` read);
    owns both and closes them in ``close``."""

    def __init__(self, to_browser: int, from_browser: int, name: str = "chromium"):
        self._to_browser, self._from_browser = to_browser, from_browser
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._handlers: dict[tuple[str | None, str], list[EventHandler]] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed_why = ""
        self.closed = threading.Event()
        """Set once the browser's end of the pipe is gone: every command since fails with ``BrowserClosed``."""
        self._reader = threading.Thread(target=self._read_loop, name=f"{name}-cdp", daemon=True)
        self._reader.start()

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Send a command and wait for its reply's ``result``; the browser's error, or its end, raises ``CdpError``.

        No time-out by default: the chunk's watchdog bounds every call by killing the browser, which ends it."""
        call_id = next(self._ids)
        call = _Call(method, session_id)
        with self._lock:
            if self.closed.is_set():
                raise BrowserClosed(f"{method}: {self._closed_why}")
            self._calls[call_id] = call
        try:
            self._write(_message(call_id, method, params, session_id))
        except OSError:
            self._close_all("the browser's pipe is closed")
        if not call.done.wait(timeout):
            with self._lock:
                self._calls.pop(call_id, None)
            raise CdpError(f"{method}: no reply within {timeout:.0f} s")
        if call.error is not None:
            raise call.error
        return call.result or {}

    def post(self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None) -> None:
        """Send a command without waiting for its reply (which is dropped): what an event handler may send."""
        with contextlib.suppress(OSError):
            self._write(_message(next(self._ids), method, params, session_id))

    def on(self, method: str, handler: EventHandler, *, session_id: str | None = None) -> None:
        """Call ``handler(params)`` for each event ``method`` of ``session_id`` (None: the browser's own)."""
        with self._lock:
            self._handlers.setdefault((session_id, method), []).append(handler)

    def fail_session(self, session_id: str, why: str) -> None:
        """Fail the calls waiting on ``session_id`` (its page crashed or went away: no reply will come)."""
        with self._lock:
            waiting = [(call_id, call) for call_id, call in self._calls.items() if call.session_id == session_id]
            for call_id, _ in waiting:
                del self._calls[call_id]
        for _, call in waiting:
            call.error = CdpError(f"{call.method}: {why}")
            call.done.set()

    def close(self) -> None:
        """Close this end of both pipes (the browser reads the end of its input and exits)."""
        with contextlib.suppress(OSError):
            os.close(self._to_browser)
        self._reader.join(timeout=5)
        self._close_all("the connection was closed")

    def _write(self, data: bytes) -> None:
        with self._write_lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._to_browser, view) :]

    def _read_loop(self) -> None:
        pending: list[bytes] = []
        try:
            while block := os.read(self._from_browser, READ_BLOCK):
                while (end := block.find(b"\0")) >= 0:
                    pending.append(block[:end])
                    self._dispatch(b"".join(pending))
                    pending.clear()
                    block = block[end + 1 :]
                if block:
                    pending.append(block)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.close(self._from_browser)
            self._close_all("the browser closed its DevTools pipe (it exited, crashed or was killed)")

    def _dispatch(self, raw: bytes) -> None:
        message = json.loads(raw)
        if "id" in message:
            with self._lock:
                call = self._calls.pop(message["id"], None)
            if call is None:
                return
            if "error" in message:
                error = message["error"]
                call.error = CdpError(f"{call.method}: {error.get('message', 'error')} {error.get('data', '')}".strip())
            else:
                call.result = message.get("result", {})
            call.done.set()
            return
        with self._lock:
            handlers = list(self._handlers.get((message.get("sessionId"), message.get("method", "")), ()))
        for handler in handlers:
            handler(message.get("params", {}))

    def _close_all(self, why: str) -> None:
        with self._lock:
            if not self.closed.is_set():
                self._closed_why = why
                self.closed.set()
            calls, self._calls = list(self._calls.values()), {}
        for call in calls:
            call.error = BrowserClosed(f"{call.method}: {why}")
            call.done.set()


def _message(call_id: int, method: str, params: dict[str, Any] | None, session_id: str | None) -> bytes:
    """One command as the pipe carries it: JSON ended by a NUL byte."""
    message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
    if session_id is not None:
        message["sessionId"] = session_id
    return json.dumps(message).encode() + b"\0"


@dataclass(frozen=True)
class CdpSession:
    """One page's side of the connection (a flat session, ``Target.attachToTarget``)."""

    connection: CdpConnection
    session_id: str

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None) -> dict[str, Any]:
        return self.connection.send(method, params, session_id=self.session_id, timeout=timeout)

    def post(self, method: str, params: dict[str, Any] | None = None) -> None:
        self.connection.post(method, params, session_id=self.session_id)

    def on(self, method: str, handler: EventHandler) -> None:
        self.connection.on(method, handler, session_id=self.session_id)
