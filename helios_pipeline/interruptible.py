"""Calls that a signal must still interrupt, and calls the CLI must not wait on for long.

Dagster's in-process execution (``execute_in_process``) takes SIGINT and SIGTERM away from the main
thread while it runs: it records them and raises only at its next checkpoint, and forgets one that
arrives after the last checkpoint. A SIGTERM to the CLI while it planned a render was lost that way
(the render went on to the end) or failed the plan (exit 1 instead of "cancelled"). Run in a worker
thread, the execution leaves the handlers alone (Dagster only replaces them on the main thread),
and the main thread's wait is what the signal interrupts.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
JOIN_SECONDS = 0.2


def call_interruptibly(function: Callable[[], T], finish_seconds: float, name: str = "interruptible") -> T:
    """``function()`` in a worker thread, waited on here so that ``KeyboardInterrupt`` reaches this thread.

    On an interrupt the call gets ``finish_seconds`` to end (a run it records ends as such), then
    the interrupt propagates; a call still going after that is abandoned (a daemon thread).
    """
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # handed to the waiting thread, whatever it is
            outcome["error"] = exc

    worker = threading.Thread(target=call, daemon=True, name=name)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(JOIN_SECONDS)
    except KeyboardInterrupt:
        worker.join(finish_seconds)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def start_in_background(function: Callable[[], object], name: str) -> threading.Thread:
    """``function()`` in a daemon thread whose errors are ignored: a request whose answer nobody waits for.

    Used for requests that can block far longer than a stop may take (a gRPC call to a code server
    that is busy or stopped waits up to Dagster's 60 s timeout); the process may exit before it ends.
    """

    def call() -> None:
        try:
            function()
        except Exception:  # nobody waits for the answer; the caller checks the outcome itself
            return

    thread = threading.Thread(target=call, daemon=True, name=name)
    thread.start()
    return thread


INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_set(cancel: threading.Event) -> Iterator[None]:
    """While in the block, SIGINT and SIGTERM set ``cancel`` instead of raising; on leaving it, the first such signal
    is raised again, to the handlers that were there before (Dagster's run worker then stops the step as usual).

    A handler that raises does so in whatever the main thread is running: inside a library's event loop, asyncio
    catches any exception but ``KeyboardInterrupt`` in a callback and only logs it, so Dagster's interrupt of a run
    worker (``DagsterExecutionInterruptedError``) was lost and the chunk rendered on to the end after its run was
    stopped. A chunk looks at ``cancel`` between frames, and its watchdog kills a browser that a stuck call holds.
    Anywhere but on the main thread the block changes nothing (only the main thread may set handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def note(signum: int, _frame: object) -> None:
        received.append(signum)
        cancel.set()

    try:
        with signal_handlers(INTERRUPT_SIGNALS, note):
            yield
    finally:
        if received:
            signal.raise_signal(received[0])


@contextlib.contextmanager
def signal_handlers(signums: tuple[signal.Signals, ...], handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for ``signums`` while in the block (main thread only); the handlers that were there after it."""
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, earlier in previous.items():
            signal.signal(signum, earlier)
