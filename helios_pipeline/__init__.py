"""helios_pipeline: frame-exact, chunked rendering of HTML video compositions.

The public names below are imported on first use, not with the package: every chunk worker is
``python -m helios_pipeline.engine.worker``, which imports this package first, and imports only what
its chunk needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from helios_pipeline.plan import RenderChunk, RenderPlan
    from helios_pipeline.spec import AudioTrack, RenderSpec, SpecError, load_spec
    from helios_pipeline.stills import render_still

__all__ = ["AudioTrack", "RenderChunk", "RenderPlan", "RenderSpec", "SpecError", "load_spec", "render_still"]
__version__ = "0.1.0"

_HOMES = {
    "AudioTrack": "helios_pipeline.spec",
    "RenderSpec": "helios_pipeline.spec",
    "SpecError": "helios_pipeline.spec",
    "load_spec": "helios_pipeline.spec",
    "RenderChunk": "helios_pipeline.plan",
    "RenderPlan": "helios_pipeline.plan",
    "render_still": "helios_pipeline.stills",  # brings the capture engine, which importing the spec must not
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'helios_pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
