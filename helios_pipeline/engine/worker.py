"""Chunk worker process: ``python -m helios_pipeline.engine.worker`` renders one chunk.

It reads ``{"spec": ..., "chunk": ...}`` as JSON on stdin and writes JSON lines on stdout:
``{"progress": frames}`` while rendering, then ``{"result": {...}}`` or ``{"error": ..., "kind": ...}``.
Running each chunk in its own process (and process group) lets the orchestrator abort a chunk
by killing the group: Chromium, its helpers and FFmpeg go with it.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> int:
    job = json.loads(sys.stdin.read())
    cancel = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    signal.signal(signal.SIGINT, lambda *_: cancel.set())
    from helios_pipeline.engine.chunk import render_chunk
    from helios_pipeline.engine.errors import RenderCancelled
    from helios_pipeline.plan import RenderChunk
    from helios_pipeline.spec import RenderSpec

    try:
        spec = RenderSpec.model_validate(job["spec"])
        chunk = RenderChunk.model_validate(job["chunk"])
        result = render_chunk(spec, chunk, on_progress=lambda frames: _emit({"progress": frames}), cancel=cancel)
    except RenderCancelled as exc:
        _emit({"error": str(exc), "kind": "cancelled"})
        return 3
    except Exception as exc:
        _emit({"error": str(exc), "kind": type(exc).__name__})
        return 1
    _emit({"result": result.to_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
