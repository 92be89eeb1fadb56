"""A contact sheet: one image with a grid of thumbnails across a video, to see a render at a glance."""

from __future__ import annotations

from pathlib import Path

from helios_pipeline.engine.ffmpeg import ffmpeg_command, run_ffmpeg
from helios_pipeline.engine.fileio import atomic_output
from helios_pipeline.engine.probe import count_video_frames


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
) -> Path:
    """Write a ``columns x rows`` grid of evenly spaced frames beside ``video`` and return its path.

    ``frames_from`` reads the frames from another file with the same video stream (the concat the
    final mix stream-copies), so the sheet can be made while the mix is still writing ``video``.
    ``frames``, when the caller knows it (the plan does), saves an ffprobe pass over the video.
    """
    source = frames_from or video
    if frames is None:
        frames = count_video_frames(source)
    cells = columns * rows
    step = max(1, frames // cells)
    output = contact_sheet_path(video)
    with atomic_output(output) as partial:
        command = ffmpeg_command(
            "-i", str(source),
            "-vf", f"select=not(mod(n\\,{step})),scale={thumb_width}:-2,tile={columns}x{rows}:padding=4:margin=4",
            "-frames:v", "1", "-fps_mode", "passthrough", str(partial),
        )  # fmt: skip
        run_ffmpeg(command, f"contact sheet for {video} (frames from {source})")
    return output
