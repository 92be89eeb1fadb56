"""A content fingerprint of a render: the spec's picture-and-sound settings plus every file its
composition, audio and subtitles read.

Used as a data version, so a changed composition shows as stale and an unchanged one is not
rendered again; settings that only say where, when or how parallel a render runs (a cron string,
the chunk count, the worker size) leave it unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from helios_pipeline.files import composition_files, hash_file
from helios_pipeline.spec import RenderSpec

ENGINE_VERSION = "2"  # bump when the engine's output for the same input changes

# Every RenderSpec field is in exactly one of these sets (a test enforces it, so a new field cannot
# slip into or out of the data version unnoticed).
HASHED_FIELDS = frozenset(
    {
        "width", "height", "fps", "start_frame", "mode", "video_codec", "pixel_format", "crf", "preset",
        "video_bitrate", "audio_codec", "audio_bitrate", "input_props", "random_seed", "canvas_selector",
        "intermediate_video_codec", "web_codecs_preference", "intermediate_image_format",
        "intermediate_image_quality",
    }
)  # fmt: skip
"""Hashed as they are: each changes pixels or samples."""
DERIVED_FIELDS = frozenset(
    {"duration_in_seconds", "frame_count", "composition", "audio_tracks", "subtitles", "output", "network"}
)
"""Hashed through what they mean: the total frame count, file contents (not paths), the output container,
what the page may load (a refused image paints differently; ``network.strict`` only fails or not)."""
IGNORED_FIELDS = frozenset(
    {"name", "concurrency", "frames_per_chunk", "worker", "stability_timeout", "schedule", "timezone", "poster_frame"}
)
"""Where, when, in how many pieces and on what machine a render runs: never a pixel or a sample.
(A frame that misses ``stability_timeout`` fails its chunk; it is never rendered differently.
``poster_frame`` adds a still beside the video and changes nothing in it.)"""


def _identity(spec: RenderSpec) -> dict[str, Any]:
    """The spec's picture-and-sound settings; files count by their bytes, not by where they are."""
    data = spec.to_json_dict()
    identity = {key: data[key] for key in sorted(HASHED_FIELDS)}
    identity["total_frames"] = spec.total_frames  # duration_in_seconds x fps or frame_count: one number
    identity["composition"] = Path(spec.composition).name if spec.is_local else spec.composition
    identity["audio_tracks"] = [{k: v for k, v in track.items() if k != "path"} for track in data["audio_tracks"]]
    identity["subtitles"] = spec.subtitles is not None
    identity["container"] = Path(str(spec.output)).suffix.lower()  # .webm mixes Opus where .mp4 has AAC
    if spec.network is not None:  # absent, the key stays out: fingerprints of specs without it are unchanged
        identity["network"] = {"mode": spec.network.mode, "allow": list(spec.network.allow)}
    return identity


def render_fingerprint(spec: RenderSpec) -> str:
    """A short hex digest of what determines the rendered pictures and sound (see ``HASHED_FIELDS``)."""
    digest = hashlib.sha256(ENGINE_VERSION.encode())
    digest.update(json.dumps(_identity(spec), sort_keys=True).encode())
    if spec.is_local:
        root = Path(spec.composition).parent
        for path in composition_files(root, packages=False):
            digest.update(str(path.relative_to(root)).encode())
            hash_file(digest, path)
    for track in spec.audio_tracks:
        hash_file(digest, track.path)
    if spec.subtitles is not None:
        hash_file(digest, Path(spec.subtitles))
    return digest.hexdigest()[:16]
