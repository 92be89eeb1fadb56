"""helios_pipeline: frame-exact, chunked rendering of HTML video compositions."""

from helios_pipeline.plan import RenderChunk, RenderPlan, plan
from helios_pipeline.spec import AudioTrack, RenderSpec, SpecError, load_spec

__all__ = ["AudioTrack", "RenderChunk", "RenderPlan", "RenderSpec", "SpecError", "load_spec", "plan"]
__version__ = "0.1.0"
