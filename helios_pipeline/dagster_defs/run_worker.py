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
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from helios_pipeline.dagster_defs import private_api
from helios_pipeline.heap import long_lived_imports

if TYPE_CHECKING:
    from playwright.sync_api import Playwright

THIRD_PARTY_MODULES = ("pydantic", "yaml", "psutil", "playwright.sync_api")
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

_prestarted: tuple[int, Playwright] | None = None
"""The driver this worker started for its chunk, and the thread that may use it (Playwright's sync API is
bound to the thread that started it)."""


def execute(serialized_args: str, start_driver: bool) -> None:
    """Run ``dagster api execute_run`` in this worker. A chunk run (``start_driver``) first starts Playwright's
    driver while a thread imports the code location, as the library's chunk workers do: the ~0.5 s the
    driver takes to start leaves the chunk's critical path."""
    global _handed_out, _prestarted
    playwright = _start_driver_while_importing() if start_driver else None
    _prestarted = (threading.get_ident(), playwright) if playwright is not None else None
    _handed_out = False
    try:
        private_api.execute_run(serialized_args)
    finally:
        _prestarted = None
        if playwright is not None:
            with contextlib.suppress(Exception):  # the worker exits next; the driver ends with its pipe anyway
                playwright.stop()


_handed_out = False
"""Whether the chunk step took the driver already: a second ask is a retry of the step."""


def prestarted_playwright() -> Playwright | None:
    """The driver this run worker started for its chunk, when asked on the thread that may use it; for the
    step's first attempt only. A retry gets None (the chunk starts a driver of its own) and the first one is
    stopped: the failure may have been its death (a stuck browser's watchdog kills a driver whose call stays
    blocked), and every retry given the dead driver failed at once with "Playwright connection closed"."""
    global _handed_out, _prestarted
    if _prestarted is None or _prestarted[0] != threading.get_ident():
        return None
    if not _handed_out:
        _handed_out = True
        return _prestarted[1]
    playwright, _prestarted = _prestarted[1], None
    with contextlib.suppress(Exception):  # dead already, or not: a retry starts afresh either way
        playwright.stop()
    return None


def _start_driver_while_importing() -> Playwright | None:
    """Start the driver on this thread while another imports the code location. None if it cannot start:
    the chunk then starts its own and reports why it fails, as a run without this head start would."""
    from helios_pipeline.engine.browser import launch_playwright

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="code-location-import") as pool:
        imported = pool.submit(importlib.import_module, CODE_LOCATION_MODULE)
        try:
            return launch_playwright()
        except Exception:
            return None
        finally:
            imported.exception()  # waits; an import error shows again, in the run's own events, when Dagster imports
