"""A contact sheet: one image with a grid of thumbnails across a video, to see a render at a glance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from helios_pipeline.engine.ffmpeg import ffmpeg_command, run_ffmpeg
from helios_pipeline.engine.fileio import atomic_output
from helios_pipeline.engine.probe import count_video_frames
from helios_pipeline.engine.thumbnail import ladder_graph, ladder_outputs, preview_widths


@dataclass(frozen=True)
class ContactSheet:
    path: Path
    previews: tuple[bytes, ...] = ()
    """The sheet as JPEGs at ``thumbnail.preview_widths`` of the budget asked for, widest first (the ladder
    ``thumbnail.jpeg_within`` picks from), made by the run that wrote the sheet: no second FFmpeg run decodes it."""


def contact_sheet_path(video: Path) -> Path:
    return video.with_name(f"{video.stem}.contact.png")


def write_contact_sheet(
    video: Path,
    *,
    frames_from: Path | None = None,
    frames: int | None = None,
    columns: int = 4,
    rows: int = 3,
    thumb_width: int = 320,
    preview_bytes: int | None = None,
) -> ContactSheet:
    """Write a ``columns x rows`` grid of evenly spaced frames beside ``video``.

    ``frames_from`` reads the frames from another file with the same video stream (the concat the
    final mix stream-copies), so the sheet can be made while the mix is still writing ``video``.
    ``frames``, when the caller knows it (the plan does), saves an ffprobe pass over the video.
    ``preview_bytes``: also the sheet's preview ladder for a JPEG of at most that many bytes (``previews``).
    """
    source = frames_from or video
    if frames is None:
        frames = count_video_frames(source)
    cells = columns * rows
    step = max(1, frames // cells)
    output = contact_sheet_path(video)
    sheet = f"[0:v]select=not(mod(n\\,{step})),scale={thumb_width}:-2,tile={columns}x{rows}:padding=4:margin=4"
    graph, outputs = f"{sheet}[sheet]", []
    if preview_bytes is not None:  # the sheet's frame split: one copy written as the PNG, one to the ladder
        ladder, outputs = ladder_graph("[preview]", preview_widths(preview_bytes))
        graph = f"{sheet},split=2[sheet][preview];{ladder}"
    with atomic_output(output) as partial, ladder_outputs(outputs) as (mapped, files):
        command = ffmpeg_command(
            "-i", str(source), "-filter_complex", graph,
            "-map", "[sheet]", "-frames:v", "1", "-fps_mode", "passthrough", str(partial), *mapped,
        )  # fmt: skip
        run_ffmpeg(command, f"contact sheet for {video} (frames from {source})")
        previews = tuple(file.read_bytes() for file in files)
    return ContactSheet(output, previews)
