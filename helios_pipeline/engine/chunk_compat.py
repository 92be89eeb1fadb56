"""Chunk compatibility: what stream-copy concat needs every chunk to share, read from the encoded files.

Stream copy joins chunks without decoding, so every chunk must carry the same codec, profile,
level, pixel format, size, rate, time base, reference/B-frame structure, parameter sets and audio
format. These are read from each encoded chunk by ffprobe, never taken from the spec: a worker
whose FFmpeg (or x264/x265/libvpx) build encodes differently shows up in its own chunk's facts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.ffmpeg import run_ffprobe

VIDEO_KEYS = (
    "codec_name", "profile", "level", "codec_tag_string", "pix_fmt", "width", "height", "sample_aspect_ratio",
    "field_order", "color_range", "color_space", "color_transfer", "color_primaries", "r_frame_rate", "time_base",
    "has_b_frames", "refs",
)  # fmt: skip
AUDIO_KEYS = ("codec_name", "sample_fmt", "sample_rate", "channels", "channel_layout", "bits_per_sample", "time_base")
H264_SPS_PPS = {7, 8}
HEVC_VPS_SPS_PPS = {32, 33, 34}  # hvcC arrays also carry SEI, and x265's SEI names the chunk's own keyint
PARAMETER_SETS = "video.parameter_sets"
OPTIONAL = (PARAMETER_SETS,)
"""Compared only when both chunks have them (a one-frame chunk records no parameter sets)."""


@dataclass(frozen=True)
class ChunkProbe:
    """One ffprobe of an encoded chunk: its frame count and its encoder settings."""

    frames: int
    encoder_settings: dict[str, str]


@dataclass(frozen=True)
class ChunkFacts:
    """What the check needs to know about one chunk and who made it."""

    chunk_id: int
    worker: str
    host: str
    encoder_settings: dict[str, str]

    def label(self) -> str:
        return f"chunk {self.chunk_id} (worker {self.worker} on {self.host})"


def probe_chunk(path: Path) -> ChunkProbe:
    """Count the chunk's video packets and read its encoder settings, in one ffprobe call."""
    streams = run_ffprobe(path, "-count_packets", "-show_data", "-show_streams").get("streams") or []
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    if video is None:
        raise RenderError(f"{path} has no video stream")
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    frames = int(video.get("nb_read_packets") or 0)
    settings = encoder_settings(video, audio)
    if frames == 1:
        # x264 encodes a one-frame GOP intra-only, with its own SPS; the in-band headers make it join fine
        settings.pop(PARAMETER_SETS)
    return ChunkProbe(frames=frames, encoder_settings=settings)


def encoder_settings(video: dict[str, Any], audio: dict[str, Any] | None) -> dict[str, str]:
    """A flat, readable signature of ffprobe stream entries; equal signatures join by stream copy."""
    settings = {f"video.{key}": str(video[key]) for key in VIDEO_KEYS if key in video}
    settings["video.encoder"] = str((video.get("tags") or {}).get("encoder", "unknown"))
    settings[PARAMETER_SETS] = _parameter_sets_hash(video)
    if audio is None:
        settings["audio"] = "none"
    else:
        settings.update({f"audio.{key}": str(audio[key]) for key in AUDIO_KEYS if key in audio})
    return settings


def _extradata(stream: dict[str, Any]) -> bytes:
    """The codec private data from ffprobe's ``-show_data`` hex dump (``offset: hex hex ...  ascii``)."""
    data = bytearray()
    for line in str(stream.get("extradata") or "").splitlines():
        if ": " in line:
            data += bytes.fromhex(line.split(": ", 1)[1][:39].replace(" ", ""))
    return bytes(data)


def _parameter_sets_hash(stream: dict[str, Any]) -> str:
    """SHA-256 of the decoder configuration: SPS/PPS (H.264), VPS/SPS/PPS (HEVC), else the whole extradata."""
    extradata = _extradata(stream)
    if not extradata:
        return "none"
    codec = stream.get("codec_name")
    try:
        if codec == "h264" and extradata[0] == 1:
            extradata = b"".join(_avcc_units(extradata))
        elif codec == "hevc" and extradata[0] == 1:
            extradata = b"".join(_hvcc_units(extradata))
    except IndexError:
        pass  # not the configuration record we expected: hash it whole
    return hashlib.sha256(extradata).hexdigest()[:16]


def _avcc_units(record: bytes) -> list[bytes]:
    """SPS and PPS NAL units of an avcC record (ISO/IEC 14496-15 5.3.3.1)."""
    units, cursor = [], 5
    for count_mask in (0x1F, 0xFF):
        count = record[cursor] & count_mask
        cursor += 1
        for _ in range(count):
            size = int.from_bytes(record[cursor : cursor + 2], "big")
            units.append(record[cursor + 2 : cursor + 2 + size])
            cursor += 2 + size
    return [unit for unit in units if unit and unit[0] & 0x1F in H264_SPS_PPS]


def _hvcc_units(record: bytes) -> list[bytes]:
    """VPS, SPS and PPS NAL units of an hvcC record (ISO/IEC 14496-15 8.3.3.1); SEI is left out."""
    units, cursor = [], 23
    for _ in range(record[22]):
        nal_type, count = record[cursor] & 0x3F, int.from_bytes(record[cursor + 1 : cursor + 3], "big")
        cursor += 3
        for _ in range(count):
            size = int.from_bytes(record[cursor : cursor + 2], "big")
            if nal_type in HEVC_VPS_SPS_PPS:
                units.append(record[cursor + 2 : cursor + 2 + size])
            cursor += 2 + size
    return units


def check_chunks_compatible(chunks: list[ChunkFacts]) -> None:
    """Raise ``RenderError`` unless every chunk's encoder settings equal the first chunk's.

    The message names both chunks, their workers and hosts, and each differing setting. Chunks
    without recorded settings (rendered before they were recorded) are not compared.
    """
    known = sorted((chunk for chunk in chunks if chunk.encoder_settings), key=lambda chunk: chunk.chunk_id)
    if not known:
        return
    # the first chunk, and for the optional settings the first chunk that has them
    references = [known[0]] + [next((c for c in known if key in c.encoder_settings), known[0]) for key in OPTIONAL]
    for chunk in known[1:]:
        for reference in {id(reference): reference for reference in references}.values():
            if reference is not chunk:
                _compare(reference, chunk)


def _compare(reference: ChunkFacts, chunk: ChunkFacts) -> None:
    ours, theirs = reference.encoder_settings, chunk.encoder_settings
    keys = sorted((set(ours) | set(theirs)) - (set(OPTIONAL) - (set(ours) & set(theirs))))
    differences = [
        f"{key}: {ours.get(key, 'absent')} vs {theirs.get(key, 'absent')}"
        for key in keys
        if ours.get(key) != theirs.get(key)
    ]
    if differences:
        raise RenderError(
            f"cannot join {reference.label()} and {chunk.label()} by stream copy: their encoder settings differ "
            f"({'; '.join(differences)}); render them again on workers with the same FFmpeg build"
        )
