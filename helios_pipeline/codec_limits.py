"""What an encoder and a pixel format require of the frame size and rate, so a frame it cannot
encode is refused when the spec is validated, not by FFmpeg after the browser has started.

Every number was checked against the FFmpeg 5.1 here by encoding one frame of each size
(``ffmpeg -f rawvideo -s WxH -i /dev/zero -frames:v 1 -c:v ENCODER -pix_fmt FORMAT``):

* libx264: at most 16384 px a side ("invalid width x height"); odd width with 4:2:0/4:2:2 and odd
  height with 4:2:0 fail ("width not divisible by 2"). Beyond H.264's highest level (6.2: 139264
  macroblocks a frame, 16711680 a second) x264 still encodes, but the stream conforms to no level
  and players and hardware decoders refuse it, so it is refused here too.
* libx265: at least 16x16 ("Image size is too small"); the same even sizes as x264; HEVC's level
  6.2 holds 35651584 luma samples a frame (8192x4352), at most 16888 a side, 4278190080 a second.
* libvpx-vp9: at most 16384 a side (larger fails mid-encode: "Memory allocation error");
  libvpx (VP8): at most 16383; libaom-av1: at most 65536; all three take odd sizes in 4:2:0.
* libsvtav1: 64 to 16384 wide, 64 to 8704 high, width and height even whatever the format.
* utvideo: the even sizes of its chroma subsampling; prores_ks, ffv1, png, qtrle: any size.
* .mov/.mp4/.m4v files hold at most 65535 a side ("Resolution ... too large for mov/mp4").

Encoders not listed here are left to FFmpeg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

MOV_MAX_SIDE = 65535
MOV_SUFFIXES = (".mov", ".mp4", ".m4v")


@dataclass(frozen=True)
class Level:
    """The largest frame and frame rate the codec's highest level allows, counted in ``block``-sized squares."""

    name: str
    block: int
    max_frame_blocks: int
    max_blocks_per_second: int
    max_side: int | None = None
    example: str = ""

    def blocks(self, width: int, height: int) -> int:
        return math.ceil(width / self.block) * math.ceil(height / self.block)


H264_LEVEL = Level("H.264 level 6.2", 16, 139_264, 16_711_680, example="8192x4352")
HEVC_LEVEL = Level("HEVC level 6.2", 1, 35_651_584, 4_278_190_080, max_side=16_888, example="8192x4352")


@dataclass(frozen=True)
class EncoderLimits:
    """The frame sizes one encoder accepts."""

    min_side: int = 1
    max_width: int | None = None
    max_height: int | None = None
    even_for_subsampling: bool = False
    """Chroma-subsampled formats need whole chroma samples: even width for 4:2:x, even height for 4:2:0."""
    always_even: bool = False
    level: Level | None = None


_X264 = EncoderLimits(max_width=16384, max_height=16384, even_for_subsampling=True, level=H264_LEVEL)
_X265 = EncoderLimits(min_side=16, even_for_subsampling=True, level=HEVC_LEVEL)
ENCODER_LIMITS: dict[str, EncoderLimits] = {
    "libx264": _X264,
    "h264": _X264,  # FFmpeg's default H.264 encoder is libx264
    "libx265": _X265,
    "hevc": _X265,
    "libvpx-vp9": EncoderLimits(max_width=16384, max_height=16384),
    "libvpx": EncoderLimits(max_width=16383, max_height=16383),
    "libaom-av1": EncoderLimits(max_width=65536, max_height=65536),
    "libsvtav1": EncoderLimits(min_side=64, max_width=16384, max_height=8704, always_even=True),
    "utvideo": EncoderLimits(even_for_subsampling=True),
}

# a pixel format's chroma subsampling as (horizontal, vertical) divisors, from the name FFmpeg gives it
_SUBSAMPLING_TAGS = {"420": (2, 2), "422": (2, 1), "411": (4, 1), "410": (4, 4), "440": (1, 2)}
_SEMI_PLANAR = {"nv12": (2, 2), "nv21": (2, 2), "p010": (2, 2), "p016": (2, 2), "nv16": (2, 1), "nv20": (2, 1),
                "p210": (2, 1), "p216": (2, 1), "y210": (2, 1)}  # fmt: skip


def chroma_subsampling(pixel_format: str) -> tuple[int, int]:
    """How many pixels share one chroma sample across and down (1, 1 for 4:4:4 and RGB)."""
    name = pixel_format.lower()
    for prefix, divisors in _SEMI_PLANAR.items():
        if name.startswith(prefix):
            return divisors
    return next((divisors for tag, divisors in _SUBSAMPLING_TAGS.items() if tag in name), (1, 1))


def _multiple_problem(field: str, value: int, divisor: int, why: str) -> tuple[str, str] | None:
    if value % divisor == 0:
        return None
    lower, upper = value - value % divisor, value - value % divisor + divisor
    nearest = f"{lower} or {upper}" if lower > 0 else str(upper)
    if divisor == 2:
        return field, f"{value} is odd: {why} needs an even {field}; use {nearest}"
    return field, f"{value} is not a multiple of {divisor}: {why} needs a {field} divisible by {divisor}; use {nearest}"


def _size_problems(video_codec: str, pixel_format: str, width: int, height: int) -> list[tuple[str, str]]:
    limits = ENCODER_LIMITS.get(video_codec)
    if limits is None:
        return []
    problems: list[tuple[str, str]] = []
    for field, value, maximum in (("width", width, limits.max_width), ("height", height, limits.max_height)):
        if value < limits.min_side:
            problems.append((field, f"{value} is below {video_codec}'s minimum of {limits.min_side}"))
        elif maximum is not None and value > maximum:
            problems.append((field, f"{value} exceeds {video_codec}'s maximum of {maximum}"))
    across, down = chroma_subsampling(pixel_format)
    if limits.always_even:
        across, down, why = max(across, 2), max(down, 2), video_codec
    else:
        why = f"pixel_format {pixel_format} with {video_codec}"
    if limits.always_even or limits.even_for_subsampling:
        for field, value, divisor in (("width", width, across), ("height", height, down)):
            if problem := _multiple_problem(field, value, divisor, why):
                problems.append(problem)
    return problems


def _level_problems(video_codec: str, width: int, height: int, fps: float) -> list[tuple[str, str]]:
    limits = ENCODER_LIMITS.get(video_codec)
    level = limits.level if limits else None
    if level is None:
        return []
    unit = "macroblocks" if level.block > 1 else "pixels"
    size = f"{width}x{height}"
    if level.max_side is not None and max(width, height) > level.max_side:
        field = "width" if width >= height else "height"
        return [(field, f"{max(width, height)} exceeds {level.name}'s maximum of {level.max_side} a side")]
    blocks = level.blocks(width, height)
    if blocks > level.max_frame_blocks:
        return [("width, height", f"{size} is {blocks} {unit} a frame, more than {level.name} (the highest) "
                 f"allows ({level.max_frame_blocks}, e.g. {level.example}); make it smaller or use libvpx-vp9 "
                 "or libaom-av1")]  # fmt: skip
    if blocks * fps > level.max_blocks_per_second:
        top = level.max_blocks_per_second / blocks
        return [("fps", f"{fps:g} fps at {size} is {blocks * fps:.0f} {unit} a second, more than {level.name} "
                 f"(the highest) allows ({level.max_blocks_per_second}): at most {math.floor(top * 1000) / 1000:g} "
                 f"fps at this size")]  # fmt: skip
    return []


def frame_problems(
    video_codec: str, pixel_format: str, width: int, height: int, fps: float, output: Path | None
) -> list[tuple[str, str]]:
    """Why ``video_codec`` cannot encode ``width`` x ``height`` frames of ``pixel_format`` at ``fps`` into
    ``output``, as (field, reason) pairs; empty when it can (or when these tables cannot tell)."""
    problems = _size_problems(video_codec, pixel_format, width, height)
    if not problems:
        problems = _level_problems(video_codec, width, height, fps)
    if output is not None and output.suffix.lower() in MOV_SUFFIXES:
        for field, value in (("width", width), ("height", height)):
            if value > MOV_MAX_SIDE and not any(name == field for name, _ in problems):
                problems.append((field, f"{value} exceeds the {MOV_MAX_SIDE} a {output.suffix} file can hold"))
    return problems
