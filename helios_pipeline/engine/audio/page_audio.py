"""Implicit audio: the sound of the page's own ``<audio>`` and ``<video>`` elements, per chunk, as PCM.

Pages are seeked, never played, so the browser produces no sound: after the page has loaded, each
chunk reads its media elements (open shadow roots included) and FFmpeg renders what they would
have played during the chunk's time range, from their sources, as ``pcm_s16le`` 48 kHz stereo.
The PCM is muxed into the chunk file after the video is encoded; concatenation carries it along
by stream copy, and the final mix (:mod:`helios_pipeline.engine.audio.mix`) adds it to the spec's
audio tracks with no level change.

What an element contributes. Skipped: ``data-helios-no-audio``, ``muted``, ``volume`` 0, no
source, or a source without an audio stream (a silent video). Otherwise its source (``currentSrc``)
plays from ``data-helios-seek`` seconds into it, starting at ``data-helios-offset`` seconds on the
composition timeline (composition time 0 is frame 0), at ``playbackRate`` (pitch kept), at
``volume``, restarting from the beginning of the source with ``loop`` (like the seek driver,
which sets ``currentTime = ((t - offset) * rate + seek) % duration``). ``data-helios-fade-in``
fades in from the offset; ``data-helios-fade-out`` ends where the element stops being audible:
the end of its source, or the end of the render. Sources may be files of a local composition
(read from disk), http(s) URLs (read by FFmpeg), or ``blob:``/``data:`` URLs (fetched inside the
page and written to a temporary file beside the chunk, removed afterwards).

Sample exactness. Global sample ``s`` is composition time ``s / 48000``; the chunk of frames
``[a, b)`` carries samples ``[round(48000 a / fps), round(48000 b / fps))`` (:func:`sample_window`),
so the chunks tile the timeline with no gap or overlap. Every track is placed on that timeline and
computed from the start of its source in every chunk, then cut to the chunk's window
(:func:`~helios_pipeline.engine.audio.timeline.track_chain`, the same placement and chain as an
explicit track in the final mix), so a chunk's samples are the very samples a single-chunk render
has at those positions, and the concatenated PCM equals the PCM of one render, bit for bit.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from helios_pipeline.engine.audio.timeline import (
    SAMPLE_RATE,
    TrackTiming,
    frame_sample,
    mix_line,
    place_track,
    sample_window,
    source_inputs,
    track_lines,
)
from helios_pipeline.engine.cdp import CdpError
from helios_pipeline.engine.encode import timescale_args
from helios_pipeline.engine.errors import PageError, RenderError
from helios_pipeline.engine.ffmpeg import FFmpegProcess, ffmpeg_command, run_ffmpeg
from helios_pipeline.engine.page import RenderPage
from helios_pipeline.engine.page_network import PageNetwork
from helios_pipeline.engine.page_scripts import page_script
from helios_pipeline.engine.probe import audio_stream_duration
from helios_pipeline.plan import RenderChunk
from helios_pipeline.spec import RenderSpec

CHANNELS = 2
CODEC = "pcm_s16le"
METADATA_TIMEOUT_MS = 10000
"""How long the scan waits for an audible element to load its metadata (then it is read as it is)."""


@dataclass(frozen=True)
class MediaElement:
    """One ``<audio>``/``<video>`` element as the scan read it."""

    tag: str
    id: str
    src: str
    no_audio: bool
    muted: bool
    volume: float
    loop: bool
    playback_rate: float
    offset: float
    seek: float
    fade_in: float
    fade_out: float

    @classmethod
    def from_page(cls, data: dict[str, Any]) -> MediaElement:
        return cls(
            tag=str(data.get("tag") or "audio"),
            id=str(data.get("id") or ""),
            src=str(data.get("src") or ""),
            no_audio=bool(data.get("noAudio")),
            muted=bool(data.get("muted")),
            volume=float(data.get("volume") or 0.0),
            loop=bool(data.get("loop")),
            playback_rate=float(data.get("playbackRate") or 1.0),
            offset=float(data.get("offset") or 0.0),
            seek=float(data.get("seek") or 0.0),
            fade_in=float(data.get("fadeIn") or 0.0),
            fade_out=float(data.get("fadeOut") or 0.0),
        )

    @property
    def audible(self) -> bool:
        """Could it make a sound at all (before its source is looked at)?"""
        return bool(self.src) and not self.no_audio and not self.muted and self.volume > 0

    @property
    def label(self) -> str:
        """``<audio id="x" src="…">``: how errors name the element."""
        ident = f' id="{self.id}"' if self.id else ""
        src = self.src if len(self.src) <= 80 else self.src[:77] + "..."
        return f'<{self.tag}{ident} src="{src}">'


@dataclass(frozen=True, kw_only=True)
class PageAudioTrack(TrackTiming):
    """An audible element with its source resolved to something FFmpeg reads (a file or a URL)."""

    source: str
    label: str


def chunk_audio_graph(
    tracks: Sequence[PageAudioTrack], window: tuple[int, int], render_end: int
) -> tuple[str, list[PageAudioTrack]]:
    """The ``-filter_complex`` graph (output ``[aout]``) of the page audio in ``window``, and its inputs.

    Input ``i`` (from 0) is the i-th returned track: only tracks audible in the window are read.
    ``render_end`` is the global sample where the render ends (fade-outs of looping tracks end there).
    """
    first, last = window
    if last <= first:
        raise ValueError(f"empty sample window {window}")
    placed = [(track, p) for track in tracks if (p := place_track(track, render_end)) and p.sounds_in(window)]
    lines = track_lines([placement for _, placement in placed], window, first_input=0)
    lines.append(mix_line([f"[t{i}]" for i in range(len(placed))], last - first))
    return ";\n".join(lines) + "\n", [track for track, _ in placed]


def chunk_audio_command(used: Sequence[PageAudioTrack], filter_script: Path, output: Path) -> list[str]:
    """FFmpeg: read the sources, run the graph in ``filter_script``, write PCM s16le 48 kHz stereo."""
    return ffmpeg_command(
        *source_inputs((track.source, track.loop) for track in used),
        "-filter_complex_script", str(filter_script), "-map", "[aout]",
        "-c:a", CODEC, "-ar", str(SAMPLE_RATE), "-ac", str(CHANNELS), "-map_metadata", "-1", str(output),
    )  # fmt: skip


def _filter_script(output: Path) -> Path:
    return output.with_name(output.name + ".filtergraph")


def render_page_audio(
    tracks: Sequence[PageAudioTrack],
    window: tuple[int, int],
    render_end: int,
    output: Path,
    what: str = "page audio",
) -> FFmpegProcess:
    """Start FFmpeg writing the page audio of ``window`` to ``output`` (a .wav); the caller waits.

    The filter graph is written beside ``output`` (``output`` + ``.filtergraph``); remove it after.
    """
    graph, used = chunk_audio_graph(tracks, window, render_end)
    script = _filter_script(output)
    script.write_text(graph, encoding="utf-8")
    return FFmpegProcess(chunk_audio_command(used, script, output), what)


def write_page_audio(
    tracks: Sequence[PageAudioTrack], window: tuple[int, int], render_end: int, output: Path, timeout: float = 600
) -> Path:
    """Render the page audio of ``window`` to ``output`` and wait for it (library and tests)."""
    process = render_page_audio(tracks, window, render_end, output)
    try:
        process.wait(timeout)
    finally:
        _filter_script(output).unlink(missing_ok=True)
    return output


def mux_audio(video: Path, audio: Path, fps: float) -> None:
    """Add ``audio`` (copied, PCM) to ``video`` as its audio stream, in place; the video is copied too."""
    muxed = video.with_name(f"{video.stem}.with-audio{video.suffix}")
    command = ffmpeg_command(
        "-i", str(video), "-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", "-c", "copy",
        *timescale_args(fps, video), "-map_metadata", "-1", str(muxed),
    )  # fmt: skip
    try:
        run_ffmpeg(command, f"adding the page audio to {video.name}")
        os.replace(muxed, video)
    finally:
        muxed.unlink(missing_ok=True)


# -- reading the page ------------------------------------------------------------------------------


def scan_media(page: RenderPage, metadata_timeout_ms: int = METADATA_TIMEOUT_MS) -> list[MediaElement]:
    """Every ``<audio>``/``<video>`` of the loaded page (open shadow roots included), in document order."""
    return [MediaElement.from_page(item) for item in page.call(page_script("media_scan.js"), metadata_timeout_ms)]


def local_file_for(src: str, page_url: str, composition: str) -> Path | None:
    """The file of a local composition that ``src`` (a URL on its loopback server) names, if any."""
    parsed, base = urlparse(src), urlparse(page_url)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        return path if path.is_file() else None
    if composition.startswith(("http://", "https://")) or (parsed.scheme, parsed.netloc) != (
        base.scheme,
        base.netloc,
    ):
        return None
    root = Path(composition).parent.resolve()
    path = (root / unquote(parsed.path).lstrip("/")).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def fetch_in_page(page: RenderPage, url: str, label: str) -> bytes:
    """The bytes behind a ``blob:`` or ``data:`` URL, read inside the page."""
    try:
        data_url = page.call(page_script("fetch_data_url.js"), url)
    except (PageError, CdpError) as exc:
        message = exc.reason.removeprefix("the page threw: ") if isinstance(exc, PageError) else exc.message
        raise RenderError(f"page audio: could not read {label} in the page: {message}") from None
    _, _, payload = str(data_url).partition(",")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RenderError(f"page audio: {label} did not read back as base64 data") from None


def probe_source(source: str, label: str) -> tuple[bool, float | None]:
    """Does ``source`` have an audio stream, and how long is it (seconds, None if unknown)?"""
    return audio_stream_duration(source, f"page audio: FFmpeg cannot read the source of {label}")


@dataclass
class PageAudioSources:
    """The page's audible tracks with sources FFmpeg can read; owns the temporary files of blob sources."""

    tracks: list[PageAudioTrack] = field(default_factory=list)
    temp_files: list[Path] = field(default_factory=list)

    def close(self) -> None:
        for path in self.temp_files:
            path.unlink(missing_ok=True)
        self.temp_files.clear()


def collect_page_audio(
    page: RenderPage, page_url: str, composition: str, work_dir: Path, prefix: str, network: PageNetwork | None = None
) -> PageAudioSources:
    """Scan the loaded page and resolve each audible element's source.

    Files of a local composition are read from disk; other http(s) URLs are left to FFmpeg, or,
    when a network policy gates the page, downloaded through its gate (a refused source is not
    heard, and counts as a refused request); ``blob:``/``data:`` sources are fetched in the page.
    Downloaded sources are written to ``work_dir`` as ``<prefix>.page-audio-<n>.media`` (removed
    by :meth:`PageAudioSources.close`).
    """
    found = PageAudioSources()

    def temp_file(data: bytes) -> str:
        path = work_dir / f"{prefix}.page-audio-{len(found.temp_files)}.media"
        found.temp_files.append(path)
        path.write_bytes(data)
        return str(path)

    try:
        for element in scan_media(page):
            if not element.audible:
                continue
            scheme = urlparse(element.src).scheme.lower()
            if scheme in ("blob", "data"):
                source = temp_file(fetch_in_page(page, element.src, element.label))
            elif (local := local_file_for(element.src, page_url, composition)) is not None:
                source = str(local)
            elif scheme in ("http", "https") and network is not None and network.gate is not None:
                data = network.download(element.src, element.label)
                if data is None:
                    continue  # refused by the network policy: counted with the chunk's refusals
                source = temp_file(data)
            elif scheme in ("http", "https"):
                source = element.src
            else:
                raise RenderError(f"page audio: {element.label}: unsupported source (use a file, http(s) or blob:)")
            has_audio, duration = probe_source(source, element.label)
            if not has_audio:
                continue  # e.g. a <video> without a sound track
            found.tracks.append(
                PageAudioTrack(
                    source=source,
                    label=element.label,
                    volume=element.volume,
                    offset=element.offset,
                    seek=max(0.0, element.seek),
                    loop=element.loop,
                    playback_rate=element.playback_rate if element.playback_rate > 0 else 1.0,
                    fade_in=max(0.0, element.fade_in),
                    fade_out=max(0.0, element.fade_out),
                    duration=duration,
                )
            )
    except BaseException:
        found.close()
        raise
    return found


class ChunkPageAudio:
    """The page audio of one chunk: scanned after load, rendered by FFmpeg while frames are captured,
    muxed into the chunk file after the video is encoded. Without audible elements it does nothing.
    """

    def __init__(
        self, page: RenderPage, page_url: str, spec: RenderSpec, chunk: RenderChunk, network: PageNetwork | None = None
    ):
        self.page, self.page_url, self.spec, self.chunk = page, page_url, spec, chunk
        self.network = network
        output = Path(chunk.output_file)
        self.work_dir = output.parent
        self.prefix = f".{output.stem}.{os.getpid()}"
        self.audio_file = self.work_dir / f"{self.prefix}.page-audio.wav"
        self.sources = PageAudioSources()
        self._ffmpeg: FFmpegProcess | None = None

    @property
    def track_count(self) -> int:
        return len(self.sources.tracks)

    def start(self) -> None:
        """Scan the page and, when something in it is audible, start rendering this chunk's PCM."""
        self.sources = collect_page_audio(
            self.page, self.page_url, self.spec.composition, self.work_dir, self.prefix, self.network
        )
        if not self.sources.tracks:
            return
        window = sample_window(self.chunk.start_frame, self.chunk.end_frame, self.spec.fps)
        render_end = frame_sample(self.spec.start_frame + self.spec.total_frames, self.spec.fps)
        what = f"page audio of chunk {self.chunk.id}"
        self._ffmpeg = render_page_audio(self.sources.tracks, window, render_end, self.audio_file, what)

    def mux_into(self, video: Path, timeout: float = 600) -> None:
        """Wait for the PCM and add it to ``video`` (the encoded chunk) as its audio stream."""
        if self._ffmpeg is None:
            return
        self._ffmpeg.wait(timeout)
        mux_audio(video, self.audio_file, self.spec.fps)

    def close(self) -> None:
        """Stop FFmpeg if it still runs and remove every temporary file (safe to call twice)."""
        if self._ffmpeg is not None:
            self._ffmpeg.kill()
        self.audio_file.unlink(missing_ok=True)
        _filter_script(self.audio_file).unlink(missing_ok=True)
        self.sources.close()
