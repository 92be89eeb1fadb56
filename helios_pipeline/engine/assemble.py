"""The finishing step every orchestrator shares: join the chunks, mix the audio once, make the preview.

The library orchestrator runs both halves in one process; the Dagster assets run ``join_chunks``
in ``concat_video`` and ``mix_with_preview`` in ``mixed_video`` (after fetching the files from
storage). Either way the same checks hold: every chunk present, identical encoder settings, the
exact frame count, and no contact sheet or poster without its video.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helios_pipeline.engine.audio.mix import MixResult, mix_final
from helios_pipeline.engine.chunk_compat import ChunkFacts, check_chunks_compatible
from helios_pipeline.engine.concat import ConcatResult, concat_chunks
from helios_pipeline.engine.contact_sheet import contact_sheet_path, write_contact_sheet
from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.poster import poster_path
from helios_pipeline.plan import RenderPlan


@dataclass(frozen=True)
class Finished:
    mix: MixResult
    contact_sheet: Path
    poster: Path | None = None
    """The spec's ``poster_frame`` as a PNG beside the video (``<stem>.poster.png``), when it asks for one."""
    contact_sheet_previews: tuple[bytes, ...] = ()
    """The sheet's preview ladder, when ``mix_with_preview`` was given a budget (``ContactSheet.previews``)."""


def missing_chunks(render_plan: RenderPlan) -> list[str]:
    """The chunks of the plan whose file is not here (as ``000``, ``001``, …)."""
    return [f"{chunk.id:03d}" for chunk in render_plan.chunks if not Path(chunk.output_file).is_file()]


def join_chunks(render_plan: RenderPlan, facts: Sequence[ChunkFacts] = ()) -> ConcatResult:
    """Stream-copy the plan's chunks into its concat file; never a short or mismatched video."""
    missing = missing_chunks(render_plan)
    if missing:
        raise RenderError(
            f"chunks {', '.join(missing)} are not rendered; render them before the concat "
            "(a short video is never produced)"
        )
    check_chunks_compatible(list(facts))
    return concat_chunks(
        list(render_plan.concat_manifest),
        render_plan.concat_output_file,
        fps=render_plan.spec.fps,
        expected_frames=render_plan.total_frames,
    )


def mix_with_preview(render_plan: RenderPlan, final: Path | None = None, preview_bytes: int | None = None) -> Finished:
    """Mix the concat into ``final`` (default: the plan's output), write its contact sheet beside it (with its
    preview ladder for a JPEG of ``preview_bytes``, when given), and its poster when the spec has a ``poster_frame``.

    The mix stream-copies the concat's video, so the sheet is made from the concat while the mix
    runs, and the poster (a still rendered in its own browser) at the same time; if any of them
    fails, all three are removed: no video without its previews, no previews without their video.
    """
    final = final or render_plan.final_output_file
    concat = render_plan.concat_output_file
    spec = render_plan.spec
    with ThreadPoolExecutor(max_workers=2) as pool:
        sheet_job = pool.submit(
            write_contact_sheet,
            final,
            frames_from=concat,
            frames=render_plan.total_frames,
            preview_bytes=preview_bytes,
        )
        poster_job = None
        if spec.poster_frame is not None:
            from helios_pipeline.engine.still import render_still  # a browser: loaded only for a poster

            poster_job = pool.submit(render_still, spec, int(spec.poster_frame), poster_path(final))
        jobs = [job for job in (sheet_job, poster_job) if job is not None]
        previews = [contact_sheet_path(final), *([poster_path(final)] if poster_job is not None else [])]
        try:
            mix = mix_final(render_plan.mix_options, concat, final)
        except BaseException:
            _remove_after(jobs, previews)
            raise
        try:
            for job in jobs:
                job.result()
        except BaseException:
            _remove_after(jobs, [final, *previews])
            raise
        sheet = sheet_job.result()
        return Finished(
            mix=mix,
            contact_sheet=sheet.path,
            poster=poster_path(final) if poster_job is not None else None,
            contact_sheet_previews=sheet.previews,
        )


def _remove_after(jobs: list[Future[Any]], paths: list[Path]) -> None:
    """Wait for the preview jobs still running, then remove what this finishing step wrote."""
    wait(jobs)
    for path in paths:
        path.unlink(missing_ok=True)
