"""Implicit audio: the sound of the page's own <audio>/<video> elements, measured in the output.

Fast tests drive the engine functions with FFmpeg only: sample windows, placement of a track
(cross-checked against the explicit-track mix), bit-exact chunking of every kind of track, and
the PCM carried through mux and stream-copy concat. The slow tests render a composition in
Chromium (compositions/page_audio: beeps on the left channel, a continuous sine built by the
page as a blob: URL on the right) at 1, 3 and 4 chunks and decode the result.
"""

from __future__ import annotations

import base64
import itertools
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from helios_pipeline.engine.audio.mix import mix_final
from helios_pipeline.engine.audio.page_audio import (
    MediaElement,
    PageAudioTrack,
    collect_page_audio,
    local_file_for,
    mux_audio,
    probe_source,
    write_page_audio,
)
from helios_pipeline.engine.audio.timeline import TrackTiming, frame_sample, place_track, sample_window
from helios_pipeline.engine.browser import launch_browser
from helios_pipeline.engine.chunk import ChunkResult
from helios_pipeline.engine.concat import concat_chunks
from helios_pipeline.engine.encode import fps_fraction, timescale_args
from helios_pipeline.engine.page import load_composition, new_render_page
from helios_pipeline.engine.probe import count_video_frames, has_audio_stream, probe
from helios_pipeline.engine.server import composition_url, serve_folder
from helios_pipeline.orchestrator import LocalExecutor, RenderOrchestrator
from helios_pipeline.plan import MixOptions, RenderChunk, split_frames
from helios_pipeline.spec import AudioTrack, RenderSpec
from helios_pipeline_tests.conftest import COMPOSITIONS

RATE = 48000
FPS = 30
THRESHOLD = 0.02
"""Absolute level that counts as sound (beeps peak at 0.125, the page's sine at 0.25)."""
SIZE = {"width": 160, "height": 90, "preset": "ultrafast"}
PCM_MOV = {"audio_codec": "pcm_s16le", "audio_bitrate": None}
SINE_AMPLITUDE = 0.25


def ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *map(str, args)], check=True)


def decode_s16(path: Path, stream: str = "0:a:0") -> np.ndarray:
    """The audio of ``path`` as int16 stereo samples at 48 kHz, shape (n, 2)."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", stream, "-f", "s16le", "-ac", "2",
         "-ar", str(RATE), "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, dtype="<i2").reshape(-1, 2)


def as_float(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float64) / 32768


def rms(samples: np.ndarray) -> float:
    assert samples.size, "empty window"
    return float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))


def sound_onsets(channel: np.ndarray, gap: float = 0.05) -> list[float]:
    """Seconds where sound starts after at least ``gap`` s of silence."""
    loud = np.flatnonzero(np.abs(channel) > THRESHOLD)
    if not loud.size:
        return []
    starts = [loud[0], *loud[1:][np.diff(loud) > gap * RATE]]
    return [int(s) / RATE for s in starts]


def silent_video(path: Path, frames: int, fps: float = FPS) -> Path:
    ffmpeg(
        "-f", "lavfi", "-i", f"color=c=black:size=64x64:rate={fps_fraction(fps)}", "-frames:v", frames,
        "-c:v", "libx264", "-preset", "ultrafast", "-g", frames, "-bf", "0", "-pix_fmt", "yuv420p",
        *timescale_args(fps, path), path,
    )  # fmt: skip
    return path


def expected_sine(first: int, count: int) -> np.ndarray:
    """The page's blob sine (right channel), global samples [first, first + count), as int16."""
    n = np.arange(first, first + count)
    return np.round(SINE_AMPLITUDE * 32767 * np.sin(2 * np.pi * 440 * n / RATE)).astype(np.int16)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("page_audio_sources")
    # 0.4 s of silence, then a 0.3 s 1 kHz beep on the left channel only
    ffmpeg(
        "-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo:d=0.4",
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000:duration=0.3",
        "-filter_complex", "[1:a]pan=stereo|c0=c0[b];[0:a][b]concat=n=2:v=0:a=1[a]", "-map", "[a]",
        folder / "beep.wav",
    )  # fmt: skip
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=500:sample_rate=44100:duration=0.7", folder / "tone44k.wav")
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:sample_rate=44100:duration=1.3", folder / "tone.mp3")
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=660:sample_rate=48000:duration=1", folder / "tone660.wav")
    return folder


# --- sample windows -------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [24, 29.97, 30, 60, 23.976])
@pytest.mark.parametrize("start", [0, 7, 1000])
def test_sample_windows_tile_the_global_timeline(fps: float, start: int) -> None:
    ranges = split_frames(start, 97, 4)
    windows = [sample_window(s, s + n, fps) for s, n in ranges]
    assert windows[0][0] == frame_sample(start, fps)
    assert windows[-1][1] == frame_sample(start + 97, fps)
    for (_, end), (first, _) in itertools.pairwise(windows):
        assert end == first, "chunks must neither overlap nor leave a gap"
    for (s, n), (first, end) in zip(ranges, windows, strict=True):
        assert first == round(RATE * s / fps) and end == round(RATE * (s + n) / fps)


def test_frame_sample_is_exact() -> None:
    assert frame_sample(30, 30) == 48000
    assert frame_sample(1, 29.97) == 1602  # 1601.6
    assert frame_sample(2997, 29.97) == 4_800_000
    assert frame_sample(1001, 23.976) == 2_004_004  # 48000 * 1001 * 125 / 2997 = 2004004.004


# --- placement ------------------------------------------------------------------------------------


def test_placement_is_in_whole_samples_on_the_global_grid() -> None:
    """Start, seek, audible end and fades of a track, as the page audio and the final mix both use them."""
    placed = place_track(TrackTiming(offset=0.5, seek=0.25, duration=1.0, fade_in=0.1, fade_out=0.3), 10**6)
    assert placed is not None
    assert (placed.start, placed.seek, placed.end, placed.fade_in, placed.fade_out) == (
        24000,
        12000,
        36000,
        4800,
        14400,
    )
    assert not placed.sounds_in((0, 24000)) and placed.sounds_in((0, 24001))  # audible in global [24000, 60000)
    assert placed.sounds_in((59999, 60000)) and not placed.sounds_in((60000, 70000))
    # at 1.5x, the 0.75 s left of the source last 24000 samples; started 0.1 s before frame 0
    fast = place_track(TrackTiming(offset=-0.1, seek=0.25, duration=1.0, playback_rate=1.5), 48000)
    assert fast is not None and (fast.start, fast.end) == (-4800, 24000)
    # a loop is cut by the render end, and so is a fade-out longer than what is audible
    looped = place_track(TrackTiming(offset=0.1, loop=True, duration=1.0, fade_out=2.0), 48000)
    assert looped is not None and (looped.end, looped.fade_out) == (43200, 43200)
    assert place_track(TrackTiming(offset=1.0), 48000) is None  # starts where the render ends
    assert place_track(TrackTiming(offset=0.2, seek=1.0, duration=1.0), 48000) is None  # seeks past its end


def page_track(path: Path, **fields) -> PageAudioTrack:
    return PageAudioTrack(source=str(path), label=path.name, duration=probe_source(str(path), path.name)[1], **fields)


def render_window(
    tracks: list[PageAudioTrack], tmp: Path, start: int, frames: int, fps: float = FPS, render_end: int | None = None
) -> np.ndarray:
    """Page audio of frames [start, start + frames); the render ends there unless ``render_end`` (a sample) says."""
    end = frame_sample(start + frames, fps) if render_end is None else render_end
    return decode_s16(write_page_audio(tracks, sample_window(start, start + frames, fps), end, tmp / "w.wav"))


def test_beep_lands_on_its_sample(sources: Path, tmp_path: Path) -> None:
    beep = page_track(sources / "beep.wav", offset=0.5)
    audio = as_float(render_window([beep], tmp_path, 0, 90))
    assert audio.shape == (144000, 2)
    left, right = audio[:, 0], audio[:, 1]
    assert sound_onsets(left) == pytest.approx([0.9], abs=3 / RATE)  # offset 0.5 + 0.4 s of silence in the source
    assert np.flatnonzero(np.abs(left) > THRESHOLD)[-1] < round(1.2 * RATE)
    assert np.abs(right).max() == 0
    # a render window starting at frame 15 (0.5 s) holds the same beep 0.4 s in
    assert sound_onsets(as_float(render_window([beep], tmp_path, 15, 60))[:, 0]) == pytest.approx([0.4], abs=3 / RATE)


def test_seek_rate_loop_volume_and_fades(sources: Path, tmp_path: Path) -> None:
    beep = sources / "beep.wav"
    seeked = as_float(render_window([page_track(beep, offset=0.5, seek=0.2)], tmp_path, 0, 90))[:, 0]
    assert sound_onsets(seeked) == pytest.approx([0.7], abs=3 / RATE)
    fast = as_float(render_window([page_track(beep, offset=0.5, playback_rate=2.0)], tmp_path, 0, 90))[:, 0]
    loud = np.flatnonzero(np.abs(fast) > THRESHOLD)
    # 0.4 s of silence at twice the speed: the beep at 0.5 + 0.2 s for 0.15 s (atempo's overlapping
    # windows smear its edges by a few ms, well within a frame)
    assert abs(loud[0] / RATE - 0.7) < 0.5 / FPS and abs((loud[-1] - loud[0]) / RATE - 0.15) < 0.5 / FPS
    looped = as_float(render_window([page_track(beep, offset=0.0, loop=True)], tmp_path, 0, 90))[:, 0]
    # the 0.7 s source restarts from its beginning
    assert sound_onsets(looped) == pytest.approx([0.4, 1.1, 1.8, 2.5], abs=3 / RATE)
    full = as_float(render_window([page_track(beep, offset=0.5)], tmp_path, 0, 90))[:, 0]
    half = as_float(render_window([page_track(beep, offset=0.5, volume=0.5)], tmp_path, 0, 90))[:, 0]
    window = slice(round(0.95 * RATE), round(1.15 * RATE))
    assert rms(half[window]) == pytest.approx(rms(full[window]) / 2, rel=0.01)
    tone = sources / "tone660.wav"
    faded = as_float(render_window([page_track(tone, offset=1.0, fade_in=0.5, fade_out=0.25)], tmp_path, 0, 90))
    level = [rms(faded[round(t * RATE) : round((t + 0.05) * RATE), 0]) for t in (1.0, 1.2, 1.6, 1.9)]
    assert level[0] < level[1] < level[2] and level[3] < level[2]
    assert np.abs(faded[round(1.999 * RATE) :, 0]).max() < 0.002  # fade-out ends with the source at 2.0 s


@pytest.mark.parametrize(
    ("fields", "start", "fps"),
    [
        ({"offset": 0.5}, 0, FPS),
        ({"offset": 0.3, "seek": 0.25, "volume": 0.6, "fade_in": 0.2, "fade_out": 0.3}, 0, FPS),
        ({"offset": 0.2, "loop": True, "fade_in": 0.1, "fade_out": 0.5}, 0, FPS),
        ({"offset": 1.0, "seek": 0.1, "playback_rate": 1.5}, 0, FPS),
        ({"offset": 0.21, "seek": 0.05, "playback_rate": 1.25, "fade_in": 0.4, "fade_out": 0.1}, 13, 29.97),
        ({"offset": 0.07, "loop": True, "playback_rate": 0.8, "fade_out": 0.4}, 7, 23.976),
    ],
    ids=["offset", "seek-volume-fades", "loop-fades", "rate", "rate-mid-fade-from-frame-13", "slow-loop-ntsc"],
)
def test_page_track_is_placed_like_an_explicit_track(
    sources: Path, tmp_path: Path, fields: dict, start: int, fps: float
) -> None:
    """The same attributes give the very same samples as an explicit audio track in the final mix."""
    source = sources / "tone44k.wav"
    page = render_window([page_track(source, **fields)], tmp_path, start, 90, fps)
    explicit = AudioTrack.model_validate(
        {
            "path": str(source),
            "offset": fields["offset"],
            "seek": fields.get("seek", 0.0),
            "volume": fields.get("volume", 1.0),
            "loop": fields.get("loop", False),
            "fade_in_duration": fields.get("fade_in", 0.0),
            "fade_out_duration": fields.get("fade_out", 0.0),
            "playback_rate": fields.get("playback_rate", 1.0),
        }
    )
    options = MixOptions(
        audio_tracks=(explicit,), audio_codec="pcm_s16le", audio_bitrate=None, total_frames=90, fps=fps,
        start_frame=start,
    )  # fmt: skip
    mix_final(options, silent_video(tmp_path / "v.mov", 90, fps), tmp_path / "mixed.mov")
    mixed = decode_s16(tmp_path / "mixed.mov")
    first, last = sample_window(start, start + 90, fps)
    assert page.shape == mixed.shape == (last - first, 2)
    assert np.abs(page).max() > 1000, "the case must make sound"
    assert np.array_equal(page, mixed), "page audio and explicit track disagree on placement or level"


# --- chunking is bit-exact --------------------------------------------------------------------------


CHUNKED_TRACKS = {
    "plain": [("beep.wav", {"offset": 0.5})],
    "mp3-rate-fades-volume": [
        ("tone.mp3", {"offset": 0.25, "playback_rate": 1.5, "fade_in": 0.3, "fade_out": 0.2, "volume": 0.5})
    ],
    "44k-loop-seek-before-frame-0": [
        ("tone44k.wav", {"offset": -0.2, "loop": True, "seek": 0.1, "fade_in": 0.4, "fade_out": 0.5})
    ],
    "slow-loop": [("tone44k.wav", {"offset": 1.1, "playback_rate": 0.7, "loop": True, "seek": 0.3})],
    "mixed": [
        ("beep.wav", {"offset": 0.5}),
        ("tone.mp3", {"offset": 2.0, "seek": 0.5, "fade_out": 1.0}),
        ("tone44k.wav", {"offset": 0.1, "loop": True, "volume": 0.4}),
    ],
}


@pytest.mark.parametrize("case", list(CHUNKED_TRACKS))
def test_chunked_page_audio_equals_one_render_bit_for_bit(sources: Path, tmp_path: Path, case: str) -> None:
    fps, start, total = 29.97, 7, 95
    tracks = [page_track(sources / name, **fields) for name, fields in CHUNKED_TRACKS[case]]
    whole = render_window(tracks, tmp_path, start, total, fps)
    render_end = frame_sample(start + total, fps)
    parts = [render_window(tracks, tmp_path, s, n, fps, render_end) for s, n in split_frames(start, total, 4)]
    for (s, n), part in zip(split_frames(start, total, 4), parts, strict=True):
        assert len(part) == frame_sample(s + n, fps) - frame_sample(s, fps)
    assert np.array_equal(np.concatenate(parts), whole)
    assert np.abs(whole).max() > 1000, "the case must make sound"


def test_pcm_survives_mux_and_stream_copy_concat(sources: Path, tmp_path: Path) -> None:
    """Chunk files with muxed PCM, joined by the engine's concat: the PCM before AAC, sample-exact."""
    fps, start, total = 29.97, 5, 91
    tracks = [page_track(sources / "beep.wav", offset=0.5), page_track(sources / "tone44k.wav", loop=True)]
    render_end = frame_sample(start + total, fps)
    chunks = []
    for i, (s, n) in enumerate(split_frames(start, total, 3)):
        video = silent_video(tmp_path / f"chunk_{i}.mov", n, fps)
        audio = write_page_audio(tracks, sample_window(s, s + n, fps), render_end, tmp_path / f"chunk_{i}.wav")
        mux_audio(video, audio, fps)
        info = probe(video)
        assert (info.audio_codec, info.audio_sample_rate, info.video_frames) == ("pcm_s16le", RATE, n)
        chunks.append(video)
    concat_chunks(chunks, tmp_path / "concat.mov", fps=fps, expected_frames=total)
    whole = write_page_audio(tracks, sample_window(start, start + total, fps), render_end, tmp_path / "whole.wav")
    assert np.array_equal(decode_s16(tmp_path / "concat.mov"), decode_s16(whole))


# --- sources ------------------------------------------------------------------------------------------


def test_local_urls_map_back_to_composition_files(tmp_path: Path) -> None:
    (tmp_path / "sub dir").mkdir()
    (tmp_path / "sub dir" / "a b.wav").write_bytes(b"x")
    (tmp_path / "index.html").write_text("")
    page, composition = "http://127.0.0.1:4000/index.html", str(tmp_path / "index.html")
    assert (
        local_file_for("http://127.0.0.1:4000/sub%20dir/a%20b.wav", page, composition) == tmp_path / "sub dir/a b.wav"
    )
    assert local_file_for("http://127.0.0.1:4000/missing.wav", page, composition) is None
    assert local_file_for("http://127.0.0.1:4000/../etc/passwd", page, composition) is None
    assert local_file_for("http://127.0.0.1:4001/sub%20dir/a%20b.wav", page, composition) is None
    assert local_file_for("https://example.org/a.wav", "https://example.org/", "https://example.org/") is None


def test_probe_source_tells_silent_videos_apart(sources: Path, tmp_path: Path) -> None:
    assert probe_source(str(silent_video(tmp_path / "v.mov", 10)), "v") == (False, None)
    has_audio, duration = probe_source(str(sources / "tone44k.wav"), "tone")
    assert has_audio and duration == pytest.approx(0.7, abs=1e-3)


def test_media_element_audibility() -> None:
    base = {"tag": "audio", "src": "http://h/a.wav", "volume": 1, "playbackRate": 1}
    assert MediaElement.from_page(base).audible
    for change in ({"muted": True}, {"volume": 0}, {"noAudio": True}, {"src": ""}):
        assert not MediaElement.from_page(base | change).audible
    assert MediaElement.from_page(base | {"id": "x"}).label == '<audio id="x" src="http://h/a.wav">'


# --- in Chromium ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_scan_reads_every_media_element(sources: Path, tmp_path: Path) -> None:
    site, remote = tmp_path / "site", tmp_path / "remote"
    (site / "sub dir").mkdir(parents=True)
    remote.mkdir()
    shutil.copy(sources / "tone44k.wav", site / "tone.wav")
    shutil.copy(sources / "tone44k.wav", site / "sub dir" / "tone two.wav")
    shutil.copy(sources / "tone660.wav", remote / "remote.wav")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64:rate=10", "-f", "lavfi", "-i", "sine=sample_rate=48000",
           "-t", "1", "-c:v", "libvpx", "-c:a", "libopus", site / "clip.webm")  # fmt: skip
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64:rate=10", "-t", "1", "-c:v", "libvpx", site / "silent.webm")
    data_url = "data:audio/wav;base64," + base64.b64encode((sources / "beep.wav").read_bytes()).decode()
    with serve_folder(remote) as remote_base:
        (site / "index.html").write_text(
            f"""<!doctype html><body>
<audio id="plain" src="tone.wav"></audio>
<audio id="attrs" src="tone.wav" loop data-helios-offset="1.5" data-helios-seek="0.25"
       data-helios-fade-in="0.1" data-helios-fade-out="0.2"></audio>
<audio id="quiet" src="tone.wav"></audio>
<audio id="zero" src="tone.wav"></audio>
<audio id="sourced"><source src="sub%20dir/tone%20two.wav" type="audio/wav"></audio>
<audio id="remote" src="{remote_base}remote.wav"></audio>
<audio id="data" src="{data_url}"></audio>
<video id="clip" src="clip.webm"></video>
<video id="silent" src="silent.webm"></video>
<audio id="nosrc"></audio>
<audio id="muted" src="tone.wav" muted></audio>
<audio id="ignored" src="tone.wav" data-helios-no-audio></audio>
<div id="host"></div>
<script>
  const outer = document.getElementById("host").attachShadow({{ mode: "open" }});
  outer.innerHTML = '<div id="inner-host"></div><audio id="shadowed" src="tone.wav"></audio>';
  const inner = outer.getElementById("inner-host").attachShadow({{ mode: "open" }});
  inner.innerHTML = '<audio id="nested" src="tone.wav" data-helios-offset="0.5"></audio>';
  document.getElementById("quiet").volume = 0.5;
  document.getElementById("quiet").playbackRate = 1.5;
  document.getElementById("zero").volume = 0;
</script></body>""",
            encoding="utf-8",
        )
        composition = str(site / "index.html")
        with (
            composition_url(composition) as url,
            launch_browser() as browser,
        ):
            spec = RenderSpec(composition=composition, width=64, height=64, fps=FPS, frame_count=1)
            page = new_render_page(browser, spec)  # the engine's set-up installs the shadow-root walk
            load_composition(page, url, spec)
            found = collect_page_audio(page, url, composition, tmp_path, ".chunk")
            try:
                tracks = {track.label.split('"')[1]: track for track in found.tracks}
                assert list(tracks) == [
                    "plain",
                    "attrs",
                    "quiet",
                    "sourced",
                    "remote",
                    "data",
                    "clip",
                    "shadowed",
                    "nested",
                ]
                assert tracks["nested"].offset == 0.5  # in a shadow root inside a shadow root
                assert tracks["plain"].source == str(site / "tone.wav")
                assert tracks["plain"].duration == pytest.approx(0.7, abs=1e-3)
                attrs = tracks["attrs"]
                assert (attrs.loop, attrs.offset, attrs.seek, attrs.fade_in, attrs.fade_out) == (
                    True, 1.5, 0.25, 0.1, 0.2,
                )  # fmt: skip
                assert (tracks["quiet"].volume, tracks["quiet"].playback_rate) == (0.5, 1.5)
                assert tracks["sourced"].source == str(site / "sub dir" / "tone two.wav")
                assert tracks["remote"].source == f"{remote_base}remote.wav"  # read by FFmpeg over HTTP
                data_file = Path(tracks["data"].source)
                assert data_file.parent == tmp_path and data_file.read_bytes() == (sources / "beep.wav").read_bytes()
                assert tracks["clip"].source == str(site / "clip.webm")
                # FFmpeg reads the remote source while its server runs (a mono 0.125 tone: 0.088 per channel)
                audio = render_window([tracks["remote"]], tmp_path, 0, 30)
                assert np.abs(as_float(audio)).max() > 0.08
            finally:
                found.close()
            assert not data_file.exists(), "the blob/data source file must be removed"


class ProbingExecutor:
    """Renders chunks in worker processes and keeps each chunk file's audio facts and PCM."""

    def __init__(self) -> None:
        self.audio: dict[int, tuple[str | None, int | None, np.ndarray | None]] = {}
        self.lock = threading.Lock()

    def render(self, spec: RenderSpec, chunk: RenderChunk, *, on_progress, cancel) -> ChunkResult:
        result = LocalExecutor().render(spec, chunk, on_progress=on_progress, cancel=cancel)
        path = Path(chunk.output_file)
        assert count_video_frames(path) == chunk.frame_count
        info = probe(path)
        pcm = decode_s16(path) if info.audio_codec else None
        with self.lock:
            self.audio[chunk.id] = (info.audio_codec, info.audio_sample_rate, pcm)
        return result


@pytest.fixture(scope="module")
def page_folder(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("page_audio_composition")
    shutil.copy(COMPOSITIONS / "page_audio" / "index.html", folder / "index.html")
    shutil.copy(sources / "beep.wav", folder / "beep.wav")
    return folder


@pytest.fixture(scope="module")
def renders(page_folder: Path, sources: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The page audio composition rendered three ways (decoded PCM, chunk facts, results)."""
    out = tmp_path_factory.mktemp("page_audio_renders")
    composition = str(page_folder / "index.html")
    single = RenderOrchestrator.render(
        composition, out / "single.mov", fps=FPS, frame_count=90, concurrency=1, **SIZE, **PCM_MOV
    )
    probing = ProbingExecutor()
    chunked = RenderOrchestrator.render(
        composition, out / "chunked.mov", fps=FPS, frame_count=90, concurrency=3, executor=probing, **SIZE, **PCM_MOV
    )
    # 4 chunks from frame 15 (0.5 s) to 3.0 s, AAC in MP4, plus an explicit 660 Hz track at 1.0-2.0 s
    track = {"path": str(sources / "tone660.wav"), "offset": 1.0}
    mixed = RenderOrchestrator.render(
        composition, out / "mixed.mp4", fps=FPS, start_frame=15, frame_count=75, concurrency=4, audio_tracks=[track],
        **SIZE,
    )  # fmt: skip
    track_alone = MixOptions(
        audio_tracks=(AudioTrack.model_validate(track),), audio_codec="pcm_s16le", audio_bitrate=None,
        total_frames=75, fps=FPS, start_frame=15,
    )  # fmt: skip
    mix_final(track_alone, silent_video(out / "silent.mov", 75), out / "track_alone.mov")
    mixed_pcm = decode_s16(mixed.output)
    assert len(mixed_pcm) >= 120000  # AAC decodes to whole 1024-sample frames: the tail is padding
    return {
        "single": decode_s16(single.output),
        "chunked": decode_s16(chunked.output),
        "mixed": mixed_pcm[:120000],
        "track_alone": decode_s16(out / "track_alone.mov"),
        "results": {"single": single, "chunked": chunked, "mixed": mixed},
        "chunk_audio": probing.audio,
    }


@pytest.mark.slow
def test_chunks_carry_exactly_their_window_as_pcm(renders: dict) -> None:
    single = renders["single"]
    chunked_result = renders["results"]["chunked"]
    assert [c.page_audio_sources for c in chunked_result.chunks] == [3, 3, 3]  # beep, shadow beep, blob sine
    for chunk in chunked_result.plan.chunks:
        codec, sample_rate, pcm = renders["chunk_audio"][chunk.id]
        assert (codec, sample_rate) == ("pcm_s16le", RATE)
        first, end = sample_window(chunk.start_frame, chunk.end_frame, FPS)
        assert pcm is not None and pcm.shape == (end - first, 2)
        assert np.array_equal(pcm, single[first:end]), f"chunk {chunk.id} differs from the single render"
    for name in ("single", "chunked"):
        info = probe(renders["results"][name].output)
        assert info.audio_codec == "pcm_s16le" and info.video_frames == 90


@pytest.mark.slow
def test_chunked_render_equals_single_render(renders: dict) -> None:
    single, chunked = renders["single"], renders["chunked"]
    assert single.shape == chunked.shape == (144000, 2)
    assert np.array_equal(single, chunked)
    assert rms(as_float(chunked)) == pytest.approx(rms(as_float(single)), rel=0.01)


@pytest.mark.slow
def test_beep_onset_is_within_one_frame(renders: dict) -> None:
    for name in ("single", "chunked"):
        left = as_float(renders[name])[:, 0]
        # 0.5 + 0.4, and the shadow root's 2.2 + 0.4
        assert sound_onsets(left) == pytest.approx([0.9, 2.6], abs=3 / RATE), name
    # the mixed render starts at 0.5 s: the beep belongs at 0.4 s (AAC: within one frame)
    onsets = sound_onsets(as_float(renders["mixed"])[:, 0])
    assert abs(onsets[0] - 0.4) < 1 / FPS, onsets


@pytest.mark.slow
def test_muted_and_no_audio_elements_are_silent(renders: dict) -> None:
    for name in ("single", "chunked"):
        left = as_float(renders[name])[:, 0]
        # the muted element would sound at 1.6-1.9 s, the data-helios-no-audio one at 2.1-2.4 s
        assert np.abs(left[round(1.25 * RATE) : round(2.55 * RATE)]).max() < 1e-4, name
        assert np.abs(left[: round(0.85 * RATE)]).max() < 1e-4, name


@pytest.mark.slow
def test_no_gap_or_click_at_seams(renders: dict) -> None:
    """The blob sine on the right channel is continuous across every seam, to the sample."""
    expected = expected_sine(0, 144000)
    for name in ("single", "chunked"):
        right = renders[name][:, 1].astype(np.int32)
        assert np.abs(right - expected).max() <= 1, name  # JS and numpy may round sin() 1 LSB apart
    # AAC output of 4 chunks from frame 15: seams at frames 34, 53, 72 (global); compare around them
    mixed = as_float(renders["mixed"])[:, 1]
    reference = as_float(renders["single"])[24000:, 1] + as_float(renders["track_alone"])[:, 1]
    result = renders["results"]["mixed"]
    for chunk in result.plan.chunks[1:]:
        seam = frame_sample(chunk.start_frame, FPS) - 24000
        around = slice(seam - 480, seam + 480)
        assert np.abs(mixed[around] - reference[around]).max() < 0.02, f"seam at frame {chunk.start_frame}"
        quiet = np.abs(mixed[around]) < 0.005
        longest = max((len(run) for run in "".join("1" if q else "0" for q in quiet).split("0")), default=0)
        assert longest <= 3, f"silent run of {longest} samples at the seam before frame {chunk.start_frame}"


@pytest.mark.slow
def test_loudness_is_the_same_at_1_and_4_chunks(renders: dict) -> None:
    """Page audio only (2.05-2.55 s): the 4-chunk AAC render keeps the single render's level."""
    single = as_float(renders["single"])[round(2.05 * RATE) : round(2.55 * RATE)]
    mixed = as_float(renders["mixed"])[round(1.55 * RATE) : round(2.05 * RATE)]
    assert rms(mixed) == pytest.approx(rms(single), rel=0.01)
    assert rms(single[:, 1]) == pytest.approx(SINE_AMPLITUDE / np.sqrt(2), rel=0.01)


@pytest.mark.slow
def test_page_audio_and_explicit_track_add_up(renders: dict) -> None:
    """Mixed = page audio + explicit track at full level each (amix normalize=0: summed, not halved)."""
    mixed = as_float(renders["mixed"])
    reference = as_float(renders["single"])[24000:] + as_float(renders["track_alone"])
    assert mixed.shape == reference.shape == (120000, 2)
    both = slice(round(0.6 * RATE), round(1.4 * RATE))  # composition 1.1-1.9 s: sine, track and the beep's tail
    residual = rms(mixed[both] - reference[both]) / rms(reference[both])
    assert residual < 0.05, f"mixed differs from page + track by {residual:.1%}"
    # the sine (0.25) plus the mono 0.125 track, upmixed to stereo at -3 dB like every mono source
    right = rms(mixed[both, 1])
    assert right == pytest.approx(np.hypot(SINE_AMPLITUDE, 0.125 / np.sqrt(2)) / np.sqrt(2), rel=0.02)
    assert result_tracks(renders) == 2  # the explicit track and the chunks' page audio


def result_tracks(renders: dict) -> int:
    return renders["results"]["mixed"].mix.audio_tracks


@pytest.mark.slow
def test_page_without_audible_media_has_no_audio_stream(sources: Path, tmp_path: Path) -> None:
    folder = tmp_path / "quiet"
    folder.mkdir()
    shutil.copy(sources / "beep.wav", folder / "beep.wav")
    (folder / "index.html").write_text(
        '<!doctype html><body style="background:#345">'
        '<audio src="beep.wav" muted></audio><audio src="beep.wav" data-helios-no-audio></audio>'
        '<audio id="zero" src="beep.wav"></audio>'
        '<script>document.getElementById("zero").volume = 0;</script></body>',
        encoding="utf-8",
    )
    probing = ProbingExecutor()
    result = RenderOrchestrator.render(
        str(folder / "index.html"), tmp_path / "out.mp4", fps=FPS, frame_count=8, concurrency=2, executor=probing,
        **SIZE,
    )  # fmt: skip
    assert [probing.audio[i][0] for i in range(2)] == [None, None]
    assert [c.page_audio_sources for c in result.chunks] == [0, 0]
    assert not has_audio_stream(result.output)
