"""Chunk worker process: ``python -m helios_pipeline.engine.worker`` renders one chunk.

It reads ``{"spec": ..., "chunk": ...}`` as JSON on stdin and writes JSON lines on stdout:
``{"progress": frames}`` while rendering, then ``{"result": {...}}`` or ``{"error": ..., "kind": ...}``.
Running each chunk in its own process (and process group) lets the orchestrator abort a chunk
by killing the group: Chromium, its helpers and FFmpeg go with it.

Start-up is on every chunk's path: Playwright's driver (a Node process) starts while another
thread imports the engine (the capture and audio code) and asks FFmpeg its version, instead of
one after the other.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from playwright.sync_api import Playwright

from helios_pipeline.engine.browser import launch_playwright

ENGINE_MODULES = ("helios_pipeline.engine.chunk", "helios_pipeline.plan", "helios_pipeline.spec")


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _import_engine() -> None:
    for name in ENGINE_MODULES:
        importlib.import_module(name)
    from helios_pipeline.engine.errors import RenderError
    from helios_pipeline.engine.tools import ffmpeg_version

    with contextlib.suppress(RenderError):  # asked once per process, recorded with the chunk; a failure
        ffmpeg_version()  # shows again when the chunk asks


def _start_playwright_while_importing() -> Playwright:
    """Start Playwright's driver on this thread (its sync API stays on the thread that started it)
    while a second thread imports the engine."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-import") as pool:
        imported = pool.submit(_import_engine)
        try:
            return launch_playwright()
        finally:
            imported.result()


def main() -> int:
    job = json.loads(sys.stdin.read())
    cancel = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    signal.signal(signal.SIGINT, lambda *_: cancel.set())
    try:
        playwright = _start_playwright_while_importing()
    except Exception as exc:
        _emit({"error": f"could not start Playwright: {exc}", "kind": type(exc).__name__})
        return 1
    from helios_pipeline.engine.chunk import render_chunk
    from helios_pipeline.engine.errors import RenderCancelled
    from helios_pipeline.plan import RenderChunk
    from helios_pipeline.spec import RenderSpec

    try:
        spec = RenderSpec.model_validate(job["spec"])
        chunk = RenderChunk.model_validate(job["chunk"])
        result = render_chunk(
            spec, chunk, on_progress=lambda frames: _emit({"progress": frames}), cancel=cancel, playwright=playwright
        )
    except RenderCancelled as exc:
        _emit({"error": str(exc), "kind": "cancelled"})
        return 3
    except Exception as exc:
        _emit({"error": str(exc), "kind": type(exc).__name__})
        return 1
    finally:
        with contextlib.suppress(Exception):
            playwright.stop()
    _emit({"result": result.to_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
