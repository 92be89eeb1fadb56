"""What the warm process of ``WarmRunLauncher`` imports once, so that each forked run worker starts with it,
and the body each forked run worker runs.

Importing this module *is* the preload (the launcher names it to the fork server). It holds
Dagster's run command and storages and the heavy third-party libraries the renders use. The
project's own code is *not* preloaded: each run imports the code location afresh, so a run always
executes the code as it is on disk, as with Dagster's own launcher.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, TypeVar

from helios_pipeline.dagster_defs import private_api

if TYPE_CHECKING:
    from playwright.sync_api import Playwright

THIRD_PARTY_MODULES = ("pydantic", "yaml", "psutil", "playwright.sync_api")
"""Imported by the renders' code; none of them starts a thread or opens a file at import, so they survive a fork."""
T = TypeVar("T")

for _name in (*private_api.RUN_WORKER_DAGSTER_MODULES, *THIRD_PARTY_MODULES):
    importlib.import_module(_name)
private_api.reuse_sqlite_engines()  # each forked worker then compiles a statement once, not at every query

CANCEL_SECONDS = 10.0
"""After an interrupt, how long the step waits for its cancelled render to end (its browser is killed at once)."""
STOP_SECONDS = 5.0
"""How long the worker's end waits for its driver to stop (it ends with its pipe anyway when the worker exits)."""

_chunk_thread: ChunkThread | None = None
"""This run worker's chunk thread, while a chunk run executes (``execute``)."""


class ChunkThread:
    """The thread a chunk run's render runs on. It starts Playwright's driver the moment the worker starts, while
    Dagster, on the main thread, opens the instance, imports the code location and starts the run: ~0.3 s that
    came before the run's start (two chunk runs starting their drivers at once on 2 CPUs), now beside it. The
    step hands the render over, because Playwright's sync API is bound to the thread that started it."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-render")
        self._driver = self._pool.submit(_launch_or_none)

    def run(self, render: Callable[[Playwright | None, threading.Event], T]) -> T:
        """``render(driver, cancel)`` on this thread, waited on here so that an interrupt (Dagster's termination)
        reaches the step: it sets ``cancel`` (the chunk kills its browser at once), waits for the render to end,
        and goes on."""
        cancel = threading.Event()
        future = self._pool.submit(lambda: render(self._driver.result(), cancel))
        try:
            while True:
                with contextlib.suppress(FutureTimeout):
                    return future.result(timeout=WAIT_STEP_SECONDS)
        except BaseException:
            cancel.set()
            with contextlib.suppress(BaseException):
                future.result(timeout=CANCEL_SECONDS)
            raise

    def close(self) -> None:
        """Stop the driver on its thread; a render still going after a cancel is left to the worker's exit."""

        def stop() -> None:
            playwright = self._driver.result()
            if playwright is not None:
                playwright.stop()

        with contextlib.suppress(Exception):  # the worker exits next; the driver ends with its pipe anyway
            self._pool.submit(stop).result(timeout=STOP_SECONDS)
        self._pool.shutdown(wait=False)


WAIT_STEP_SECONDS = 0.2


def execute(serialized_args: str, start_driver: bool) -> None:
    """Run ``dagster api execute_run`` in this worker. A chunk run (``start_driver``) gets a ``ChunkThread``
    first, whose driver starts while Dagster starts the run."""
    global _chunk_thread
    _chunk_thread = ChunkThread() if start_driver else None
    try:
        private_api.execute_run(serialized_args)
    finally:
        chunk_thread, _chunk_thread = _chunk_thread, None
        if chunk_thread is not None:
            chunk_thread.close()


def on_chunk_thread(render: Callable[[Playwright | None, threading.Event | None], T]) -> T:
    """``render(driver, cancel)`` on this worker's chunk thread, with the driver it started; without one (a run
    launched another way: Celery, ECS, Dagster's own launcher), here, with neither (the chunk starts its own)."""
    if _chunk_thread is None:
        return render(None, None)
    return _chunk_thread.run(render)


def _launch_or_none() -> Playwright | None:
    """Playwright's driver, or None if it cannot start: the chunk then starts its own and reports why it fails,
    as a run without this head start would."""
    from helios_pipeline.engine.browser import launch_playwright

    try:
        return launch_playwright()
    except Exception:
        return None
