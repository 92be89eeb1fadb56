"""A run worker's SIGINT/SIGTERM while a chunk renders is never lost inside an event loop's callback."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest

from helios_pipeline.interruptible import interrupts_set


class Interrupted(BaseException):
    """What Dagster's run worker raises from its handler (``DagsterExecutionInterruptedError``: not a
    ``KeyboardInterrupt``)."""


@pytest.fixture
def raising_handlers():
    """SIGINT and SIGTERM handled as Dagster's run worker handles them while a step runs: raise at once."""

    def interrupt(_signum, _frame):
        raise Interrupted

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield interrupt
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _signal_from_a_callback(signum: int, wait_seconds: float = 5) -> None:
    """An event loop running a callback that the signal lands in (a library's protocol handling)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def callback() -> None:
            os.kill(os.getpid(), signum)
            for _ in range(1000):  # the handler runs here, between two bytecodes of the callback
                pass
            done.set_result(None)

        loop.call_soon(callback)
        await asyncio.wait_for(done, wait_seconds)

    asyncio.run(main())


def test_an_interrupt_raised_inside_an_event_loop_callback_is_lost(raising_handlers) -> None:
    """Why ``interrupts_set`` exists: asyncio logs an exception a callback raises and goes on."""
    with pytest.raises(TimeoutError):  # the callback died before finishing; nothing stopped
        _signal_from_a_callback(signal.SIGTERM, wait_seconds=1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_while_rendering_sets_cancel_and_is_raised_again_after(raising_handlers, signum) -> None:
    cancel = threading.Event()
    # raised again on leaving, to the handler that was there
    with pytest.raises(Interrupted), interrupts_set(cancel):
        _signal_from_a_callback(signum)
        assert cancel.is_set(), "the chunk's next frame, and its watchdog, look at this"
        reached = True
    assert reached
    assert signal.getsignal(signal.SIGTERM) is raising_handlers and signal.getsignal(signal.SIGINT) is raising_handlers


def test_without_an_interrupt_nothing_is_raised_and_the_handlers_are_restored(raising_handlers) -> None:
    cancel = threading.Event()
    with interrupts_set(cancel):
        pass
    assert not cancel.is_set()
    assert signal.getsignal(signal.SIGTERM) is raising_handlers


def test_off_the_main_thread_the_handlers_are_left_alone(raising_handlers) -> None:
    seen = []

    def in_a_thread() -> None:
        with interrupts_set(threading.Event()):
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert seen == [raising_handlers]
