"""What the warm process of ``WarmRunLauncher`` imports once, so that each forked run worker starts with it,
and the body each forked run worker runs.

Importing this module *is* the preload (the launcher names it to the fork server). It holds
Dagster's run command and storages and the heavy third-party libraries the renders use. The
project's own code is *not* preloaded: each run imports the code location afresh, so a run always
executes the code as it is on disk, as with Dagster's own launcher.
"""

from __future__ import annotations

import importlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from helios_pipeline.dagster_defs import private_api
from helios_pipeline.heap import long_lived_imports

if TYPE_CHECKING:
    from helios_pipeline.engine.browser import Browser

THIRD_PARTY_MODULES = ("pydantic", "yaml", "psutil")
"""Imported by the renders' code; none of them starts a thread or opens a file at import, so they survive a fork."""
CODE_LOCATION_MODULE = "helios_pipeline.dagster_defs.definitions"

# Frozen for the garbage collector once imported (``heap.long_lived_imports``): a worker forked from the process
# holding them shares their pages with it; without this, the worker's first full collection wrote to the header of
# every inherited object and so copied ~50 MB of the fork server into each worker (test_warm_launcher).
with long_lived_imports():
    for _name in (*private_api.RUN_WORKER_DAGSTER_MODULES, *THIRD_PARTY_MODULES):
        importlib.import_module(_name)
    private_api.reuse_sqlite_engines()  # each forked worker then compiles a statement once, not at every query
    private_api.mirror_compute_logs_by_thread()  # no `tail` and watching interpreter per stream and step


_prestarted: tuple[int, Browser] | None = None
"""The browser this worker launched for its chunk, and the thread that launched it: Chromium gets the parent-death
signal of that thread, so only that thread (the one Dagster runs the step on) may take it."""


def execute(serialized_args: str, start_browser: bool = False) -> None:
    """Run ``dagster api execute_run`` in this worker. A chunk run (``start_browser``) first launches the chunk's
    Chromium while a thread imports the code location: the ~0.4 s the browser takes to start leaves the chunk's
    critical path."""
    global _prestarted
    browser = _start_browser_while_importing() if start_browser else None
    _prestarted = (threading.get_ident(), browser) if browser is not None else None
    try:
        private_api.execute_run(serialized_args)
    finally:
        left, _prestarted = _prestarted, None
        if left is not None:  # the step never took it (it failed before, or the run was no chunk after all)
            left[1].close()


def prestarted_browser(begin_frame_control: bool) -> Browser | None:
    """The browser this run worker launched for its chunk, once, on the thread that launched it, if it was launched
    with the ``begin_frame_control`` the chunk needs; else None, and a browser that does not suit is closed. A retry
    of the step gets None: it launches its own (the first one may be what failed)."""
    global _prestarted
    if _prestarted is None or _prestarted[0] != threading.get_ident():
        return None
    browser, _prestarted = _prestarted[1], None
    if browser.begin_frame_control != begin_frame_control or browser.connection.closed.is_set():
        browser.kill()  # at once: closing politely would wait on the chunk's critical path
        browser.close()
        return None
    return browser


def _start_browser_while_importing() -> Browser | None:
    """Launch Chromium on this thread while another imports the code location, for DOM capture by BeginFrame (the
    default; a canvas render or ``HELIOS_DOM_CAPTURE=screenshot`` closes it and launches its own). None if it
    cannot start: the chunk then launches its own and reports why it fails, as a run without this head start
    would."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="code-location-import") as pool:
        imported = pool.submit(importlib.import_module, CODE_LOCATION_MODULE)
        try:
            from helios_pipeline.engine.browser import start_browser
            from helios_pipeline.engine.capture_setting import dom_capture_choice

            return start_browser(begin_frame_control=dom_capture_choice() == "auto")
        except Exception:
            return None
        finally:
            imported.exception()  # waits; an import error shows again, in the run's own events, when Dagster imports
