"""Which video codecs an output container can hold, so a mismatch fails before anything renders.

Without this check a render of many minutes ends in the final mix with FFmpeg's "Could not find
tag for codec vp8 ... not currently supported in container". The table is what FFmpeg's muxers
accept (checked against FFmpeg 5.1 by encoding one frame of each codec into each container);
containers and codecs it does not know are left to FFmpeg.
"""

from __future__ import annotations

from pathlib import Path

# encoder name (the spec's video_codec) -> the codec it writes
ENCODER_CODECS = {
    "libx264": "h264",
    "h264": "h264",
    "libx265": "hevc",
    "hevc": "hevc",
    "libvpx": "vp8",
    "libvpx-vp9": "vp9",
    "libaom-av1": "av1",
    "libsvtav1": "av1",
    "prores_ks": "prores",
    "prores": "prores",
    "png": "png",
    "qtrle": "qtrle",
    "ffv1": "ffv1",
    "utvideo": "utvideo",
}
# WebCodecs codec string prefix (kept with video_codec: copy) -> codec
INTERMEDIATE_CODECS = {
    "avc1": "h264", "h264": "h264", "vp8": "vp8", "vp09": "vp9", "vp9": "vp9", "av01": "av1", "av1": "av1"
}  # fmt: skip
_MP4 = frozenset({"h264", "hevc", "vp9", "av1", "png"})
CONTAINER_CODECS: dict[str, frozenset[str]] = {
    ".mp4": _MP4,
    ".m4v": _MP4,
    ".webm": frozenset({"vp8", "vp9", "av1"}),
    ".mov": frozenset({"h264", "hevc", "prores", "png", "qtrle", "ffv1", "utvideo"}),
}  # .mkv holds all of them
SUGGESTED_CONTAINER = {"h264": ".mp4", "hevc": ".mp4", "vp8": ".webm", "vp9": ".webm", "av1": ".mp4", "png": ".mov",
                       "prores": ".mov", "qtrle": ".mov"}  # fmt: skip


def output_video_codec(video_codec: str, intermediate_video_codec: str | None) -> str | None:
    """The codec the output file will carry; None when this table does not know the encoder."""
    if video_codec == "copy":
        wanted = (intermediate_video_codec or "avc1").lower()
        return next((codec for prefix, codec in INTERMEDIATE_CODECS.items() if wanted.startswith(prefix)), None)
    return ENCODER_CODECS.get(video_codec)


def container_problem(output: Path, video_codec: str, intermediate_video_codec: str | None) -> str | None:
    """Why ``output``'s container cannot hold the video, or None when it can (or this table cannot tell)."""
    codec = output_video_codec(video_codec, intermediate_video_codec)
    allowed = CONTAINER_CODECS.get(output.suffix.lower())
    if codec is None or allowed is None or codec in allowed:
        return None
    source = f"video_codec {video_codec}" if video_codec != "copy" else f"the kept WebCodecs stream ({codec})"
    suggestion = SUGGESTED_CONTAINER.get(codec, ".mkv")
    alternatives = suggestion if suggestion == ".mkv" else f"{suggestion} (or .mkv)"
    return f"a {output.suffix} file cannot hold {codec} video ({source}); write a {alternatives} file instead"
