"""One frame of a render as an image (a still, a poster), exactly as the video shows it.

The page is opened, loaded and seeked the way a chunk does it (``engine/page.py``, the chunk's
capture strategies, its watchdog), so the still has the video's seek driver, props, seed and
clock; only the encoder differs: the captured picture is the file (PNG, or JPEG), with the
video's burned-in subtitle when a cue shows on that frame.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from helios_pipeline.engine.begin_frame import wants_begin_frame
from helios_pipeline.engine.cdp import CdpError
from helios_pipeline.engine.chunk import make_capture
from helios_pipeline.engine.encode import fps_fraction
from helios_pipeline.engine.errors import PageError, RenderError
from helios_pipeline.engine.ffmpeg import ffmpeg_command, run_ffmpeg
from helios_pipeline.engine.fileio import atomic_output
from helios_pipeline.engine.page import RenderPage, frame_time_ms, load_composition, new_render_page
from helios_pipeline.engine.page_network import PageNetwork, page_network
from helios_pipeline.engine.poster import poster_path  # noqa: F401  (re-exported: the still's callers name it)
from helios_pipeline.engine.server import composition_url
from helios_pipeline.engine.subtitles import chunk_srt, subtitles_filter
from helios_pipeline.engine.watchdog import Watchdog, browser_call_failure, frame_limit, load_limit, watched_browser
from helios_pipeline.spec import RenderSpec

ImageFormat = Literal["png", "jpeg"]
IMAGE_FORMATS: dict[str, ImageFormat] = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
JPEG_QUALITY = 95
"""Stills are kept, not re-encoded: a higher quality than the video's intermediate frames."""


class StillError(ValueError):
    """A still that cannot be made as asked (output type, frame): bad input, nothing was rendered."""


@dataclass(frozen=True)
class StillResult:
    output: Path
    frame: int
    """The video's frame (0 is its first)."""
    composition_frame: int
    """The composition frame seeked: ``start_frame + frame``."""
    image_format: ImageFormat
    capture_method: str
    seconds: float


def image_format_for(output: Path) -> ImageFormat:
    """PNG or JPEG, chosen by the output's extension."""
    image_format = IMAGE_FORMATS.get(output.suffix.lower())
    if image_format is None:
        given = repr(output.suffix) if output.suffix else "a name without extension"
        raise StillError(f"{output}: a still is written as .png, .jpg or .jpeg, not {given}")
    return image_format


def check_still_request(spec: RenderSpec, frame: int, output: Path) -> ImageFormat:
    """Refuse what cannot be made before a browser starts: unknown image type, JPEG of a transparent
    render, a folder as output, a frame outside the video."""
    image_format = image_format_for(output)
    if image_format == "jpeg" and spec.has_alpha:
        raise StillError(
            f"{output}: JPEG has no alpha channel and pixel_format {spec.pixel_format} is transparent; write a .png"
        )
    if output.is_dir():
        raise StillError(f"{output} is a folder; give the path of the image to write")
    if not 0 <= frame < spec.total_frames:
        raise StillError(f"frame {frame} is outside the video: it has frames 0 to {spec.total_frames - 1}")
    return image_format


def _capture_spec(spec: RenderSpec, image_format: ImageFormat) -> RenderSpec:
    """The render's spec with an image capture: a still has no video encoder, so canvas mode reads the
    canvas as an image instead of through WebCodecs (same pixels, no codec in between)."""
    return spec.model_copy(
        update={
            "intermediate_image_format": image_format,
            "intermediate_image_quality": JPEG_QUALITY,
            "web_codecs_preference": "disabled",
            "video_codec": "png",  # not "copy": that one insists on WebCodecs
        }
    )


@contextlib.contextmanager
def _frame_subtitles(spec: RenderSpec, composition_frame: int, output: Path) -> Iterator[Path | None]:
    """The SRT of the one frame (as a one-frame chunk), or None when no cue shows on it."""
    if spec.subtitles is None:
        yield None
        return
    with chunk_srt(spec.subtitles, output, fps_fraction(spec.fps), composition_frame, 1) as srt:
        yield srt


def _burn_subtitles(picture: bytes, srt: Path, target: Path) -> None:
    """Burn the frame's cue into the picture with the filter the chunks use (libass, same style)."""
    source = target.with_name(f".{target.stem}.capture-{os.getpid()}{target.suffix}")
    try:
        source.write_bytes(picture)
        quality = ["-q:v", "2"] if target.suffix.lower() != ".png" else []
        command = ffmpeg_command(
            "-i", str(source), "-vf", subtitles_filter(srt), "-frames:v", "1", "-update", "1", *quality, str(target)
        )  # fmt: skip
        run_ffmpeg(command, f"subtitles on the still {target}")
    finally:
        source.unlink(missing_ok=True)


def render_still(spec: RenderSpec, frame: int, output: Path) -> StillResult:
    """Write frame ``frame`` of the video (0 is its first frame) to ``output`` (.png or .jpg).

    The file appears only when complete; on any failure no image, browser or server is left.
    """
    started = time.perf_counter()
    output = Path(output)
    image_format = check_still_request(spec, frame, output)
    capture_spec = _capture_spec(spec, image_format)
    composition_frame = spec.start_frame + frame
    page: RenderPage | None = None
    gate: PageNetwork | None = None  # the page's network policy, as for a chunk
    watchdog = Watchdog()
    try:
        with (
            atomic_output(output) as partial,
            _frame_subtitles(spec, composition_frame, output) as subtitles,
            composition_url(spec.composition) as url,
            page_network(spec, url) as network,
            watched_browser(watchdog, begin_frame_control=wants_begin_frame(capture_spec)) as browser,
        ):
            gate = network
            watchdog.arm(load_limit(), "loading the page")
            page = new_render_page(browser, spec, network.proxy)
            network.watch(page)
            load_composition(page, url, spec)
            capture = make_capture(capture_spec, page, 1)  # the video's capture: BeginFrame or screenshot
            watchdog.arm(frame_limit(spec), "capturing the frame")
            picture = capture.capture(0, composition_frame, frame_time_ms(composition_frame, spec.fps))
            watchdog.disarm()
            if page.errors:
                raise PageError(page.errors[0], composition_frame)
            network.check(composition_frame)  # strict: a refused request fails the still as it fails a chunk
            if subtitles is None:
                partial.write_bytes(picture)
            else:
                _burn_subtitles(picture, subtitles, partial)
    except (CdpError, RenderError) as exc:
        failure = browser_call_failure(
            exc, watchdog=watchdog, gate=gate, page=page, frame=composition_frame,
            what=f"still of frame {frame}",
        )  # fmt: skip
        if failure is exc:
            raise
        raise failure from None
    finally:
        watchdog.close()
    return StillResult(
        output=output,
        frame=frame,
        composition_frame=composition_frame,
        image_format=image_format,
        capture_method=capture.description,
        seconds=time.perf_counter() - started,
    )
