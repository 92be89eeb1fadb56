"""The library's stills: one frame of a render, from a spec (or a composition and options), as an image.

Renders locally in this process (no Dagster, no chunks); the engine does the work
(``engine/still.py``). Errors in the request (a frame outside the video, an image type that is
not PNG or JPEG) raise ``StillError`` before anything starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helios_pipeline.engine.still import StillError, StillResult, check_still_request
from helios_pipeline.engine.still import render_still as render_spec_still
from helios_pipeline.frame_ref import FrameError, FrameRef, parse_frame
from helios_pipeline.preflight import check_inputs
from helios_pipeline.spec import RenderSpec, resolve_spec, source_label


def render_still(
    spec_or_composition: RenderSpec | str | Path,
    image: str | Path,
    *,
    frame: FrameRef,
    sets: list[str] | tuple[str, ...] = (),
    **options: Any,
) -> StillResult:
    """Write one frame of the video ``spec_or_composition`` renders to ``image`` (.png, .jpg, .jpeg).

    ``frame`` is a frame of the video (``75``, 0 is its first frame) or a time in it (``"2.5s"``:
    the frame shown then, ``floor(t × fps)``). ``options`` and ``sets`` are spec keys, as for
    ``RenderOrchestrator.render`` (``output`` among them is the video's: nothing is written there).
    Raises ``SpecError``/``StillError`` for bad input, ``RenderError`` when the page fails.
    """
    spec = resolve_spec(spec_or_composition, None, options, sets)
    try:
        index = parse_frame(frame, spec.fps, spec.total_frames)
    except FrameError as exc:
        raise StillError(f"frame {exc}") from None
    if str(image).startswith("s3://"):
        raise StillError(f"{image}: a still is written to a local file (poster_frame uploads beside an s3:// video)")
    target = Path(image).resolve()
    check_still_request(spec, index, target)
    check_inputs(spec, source_label(spec_or_composition))
    return render_spec_still(spec, index, target)


__all__ = ["StillError", "StillResult", "render_still"]
