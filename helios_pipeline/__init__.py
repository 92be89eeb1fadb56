"""helios_pipeline: frame-exact, chunked rendering of HTML video compositions."""

from typing import Any

from helios_pipeline.plan import RenderChunk, RenderPlan, plan
from helios_pipeline.spec import AudioTrack, RenderSpec, SpecError, load_spec

__all__ = ["AudioTrack", "RenderChunk", "RenderPlan", "RenderSpec", "SpecError", "load_spec", "plan", "render_still"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``render_still`` on first use: it brings Playwright, which importing the spec must not."""
    if name == "render_still":
        from helios_pipeline.stills import render_still

        return render_still
    raise AttributeError(f"module 'helios_pipeline' has no attribute {name!r}")
