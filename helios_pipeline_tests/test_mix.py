"""The final mix, measured: real FFmpeg inputs, the output audio decoded and analysed with numpy."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import numpy as np
import pytest

from helios_pipeline.engine.audio.mix import MixResult, mix_command, mix_final, output_audio_codec, total_samples
from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.probe import count_video_frames, has_audio_stream, probe
from helios_pipeline.plan import MixOptions, plan
from helios_pipeline.spec import AudioTrack, RenderSpec

RATE = 48000
THRESHOLD = 0.02
"""Absolute sample level that counts as sound (the test tones peak at about 0.125)."""


def ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *map(str, args)], check=True)


def make_video(path: Path, frames: int, rate: str = "30", *, audio: bool = False) -> Path:
    sources: list[str | Path] = ["-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={rate}"]
    audio_args: list[str | Path] = []
    if audio:
        sources += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
        audio_args = ["-c:a", "pcm_s16le", "-ar", "48000", "-ac", "2", "-shortest"]
    ffmpeg(
        *sources, "-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-bf", "0", *audio_args, path,
    )  # fmt: skip
    return path


def make_tone(path: Path, duration: float, frequency: int = 440) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate=48000:duration={duration}", path)
    return path


def make_silence_then_tone(path: Path, silence: float, tone: float) -> Path:
    ffmpeg(
        "-f", "lavfi", "-i", f"anullsrc=r=48000:cl=mono:d={silence}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={tone}",
        "-filter_complex", "[0:a][1:a]concat=n=2:v=0:a=1[a]", "-map", "[a]", path,
    )  # fmt: skip
    return path


def decode(path: Path) -> np.ndarray:
    """The first audio stream of ``path`` as mono float32 samples at 48 kHz."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-f", "f32le", "-ac", "1",
         "-ar", str(RATE), "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, dtype="<f4")


def onset(samples: np.ndarray) -> float:
    """Seconds to the first sample above :data:`THRESHOLD`."""
    loud = np.flatnonzero(np.abs(samples) > THRESHOLD)
    assert loud.size, "no sound in the output"
    return loud[0] / RATE


def last_sound(samples: np.ndarray) -> float:
    loud = np.flatnonzero(np.abs(samples) > THRESHOLD)
    assert loud.size, "no sound in the output"
    return (loud[-1] + 1) / RATE


def rms(samples: np.ndarray, start: float, end: float) -> float:
    window = samples[round(start * RATE) : round(end * RATE)]
    assert window.size, f"window {start}-{end} s is outside the output"
    return float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))


def options(*tracks: AudioTrack, frames: int = 90, fps: float = 30, start_frame: int = 0, **kw) -> MixOptions:
    values = {"audio_codec": "aac", "audio_bitrate": "192k"} | kw
    return MixOptions(audio_tracks=tracks, total_frames=frames, fps=fps, start_frame=start_frame, **values)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    make_video(folder / "video.mov", 90)
    make_video(folder / "video_with_audio.mov", 90, audio=True)
    make_tone(folder / "tone3.wav", 3.0)
    make_tone(folder / "tone2.wav", 2.0)
    make_tone(folder / "tone_half.wav", 0.5)
    make_tone(folder / "beep.wav", 0.3)
    make_tone(folder / "tone1k.wav", 3.0, frequency=1000)
    make_silence_then_tone(folder / "late.wav", 1.0, 1.0)
    (folder / "index.html").write_text("<!doctype html><title>mix</title>", encoding="utf-8")
    return folder


def track(media: Path, name: str, **fields) -> AudioTrack:
    return AudioTrack.model_validate({"path": name, **fields}, context={"base_dir": media})


def mix(opts: MixOptions, media: Path, out: Path, video: str = "video.mov") -> np.ndarray:
    result = mix_final(opts, media / video, out)
    assert isinstance(result, MixResult)
    assert result.output_file == str(out)
    assert out.is_file()
    return decode(out)


# --- placement on the global timeline -----------------------------------------------------------


def spec_mix_options(media: Path, out: Path, **fields) -> MixOptions:
    spec = RenderSpec.model_validate(
        {"composition": "index.html", "width": 320, "height": 240, "fps": 30, "output": str(out), **fields},
        context={"base_dir": media},
    )
    return plan(spec).mix_options


def test_offset_places_the_track_on_the_timeline(media: Path, tmp_path: Path) -> None:
    out = tmp_path / "offset.mp4"
    opts = spec_mix_options(media, out, frame_count=90, audio_tracks=[{"path": "beep.wav", "offset": 1.5}])
    samples = mix(opts, media, out)
    assert abs(onset(samples) - 1.5) <= 1 / 30
    assert rms(samples, 0.0, 1.4) < 0.002


def test_offset_is_global_when_the_render_starts_later(media: Path, tmp_path: Path) -> None:
    out = tmp_path / "offset_start.mp4"
    opts = spec_mix_options(
        media, out, frame_count=90, start_frame=30, audio_tracks=[{"path": "beep.wav", "offset": 1.5}]
    )
    assert opts.start_frame == 30
    samples = mix(opts, media, out)
    assert abs(onset(samples) - 0.5) <= 1 / 30


def test_track_before_the_render_start_is_skipped_not_shifted(media: Path, tmp_path: Path) -> None:
    # late.wav: 1 s of silence, then 1 s of tone. Rendering from 0.5 s, the tone starts at 0.5 s.
    samples = mix(options(track(media, "late.wav"), start_frame=15), media, tmp_path / "skip.mp4")
    assert abs(onset(samples) - 0.5) <= 1 / 30
    assert abs(last_sound(samples) - 1.5) <= 1 / 30


def test_many_tracks_each_land_at_their_offset(media: Path, tmp_path: Path) -> None:
    # Five inputs: with four or more, the FFmpeg 5.x apad/atrim timestamp bug drops or moves a branch.
    offsets = [0.2, 0.7, 1.2, 1.7, 2.2]
    tracks = [track(media, "beep.wav", offset=o) for o in offsets]
    samples = mix(options(*tracks), media, tmp_path / "many.mp4")
    for start in offsets:
        assert rms(samples, start + 0.05, start + 0.25) > 0.05, f"beep at {start} s missing"
        assert rms(samples, start - 0.15, start - 0.05) < 0.005, f"sound before the beep at {start} s"


# --- level ---------------------------------------------------------------------------------------


def test_volume_scales_the_level(media: Path, tmp_path: Path) -> None:
    full = mix(options(track(media, "tone3.wav")), media, tmp_path / "v1.mp4")
    half = mix(options(track(media, "tone3.wav", volume=0.5)), media, tmp_path / "v05.mp4")
    ratio = rms(half, 0.5, 2.5) / rms(full, 0.5, 2.5)
    assert ratio == pytest.approx(0.5, rel=0.03)


def test_two_tracks_add_up_without_normalisation(media: Path, tmp_path: Path) -> None:
    one = mix(options(track(media, "tone3.wav")), media, tmp_path / "one.mp4")
    two = mix(options(track(media, "tone3.wav"), track(media, "tone3.wav")), media, tmp_path / "two.mp4")
    # Identical, in-phase tones: the sum has twice the level (amix with normalize would halve it).
    assert rms(two, 0.5, 2.5) / rms(one, 0.5, 2.5) == pytest.approx(2.0, rel=0.03)


# --- fades ---------------------------------------------------------------------------------------


def windows(samples: np.ndarray, start: float, end: float, step: float = 0.1) -> list[float]:
    count = round((end - start) / step)
    return [rms(samples, start + i * step, start + (i + 1) * step) for i in range(count)]


def test_fade_in_and_fade_out(media: Path, tmp_path: Path) -> None:
    tone = track(media, "tone3.wav", fade_in_duration=1.0, fade_out_duration=1.0)
    samples = mix(options(tone), media, tmp_path / "fades.mp4")
    full = rms(samples, 1.45, 1.55)
    assert rms(samples, 0.0, 0.1) < 0.1 * full
    assert rms(samples, 2.9, 3.0) < 0.1 * full
    rising = windows(samples, 0.0, 1.0)
    falling = windows(samples, 2.0, 3.0)
    assert all(b > a for a, b in itertools.pairwise(rising)), rising
    assert all(b < a for a, b in itertools.pairwise(falling)), falling
    # Linear ramps, symmetric: window k of the fade-in matches window 9-k of the fade-out.
    assert np.allclose(rising, falling[::-1], rtol=0.05, atol=0.002)
    assert rising[4] == pytest.approx(0.45 * full, rel=0.05)


def test_fade_out_ends_where_a_short_source_ends(media: Path, tmp_path: Path) -> None:
    # A 2 s source in a 3 s render: the fade-out runs over 1.5-2.0 s, not at the render end.
    samples = mix(options(track(media, "tone2.wav", fade_out_duration=0.5)), media, tmp_path / "fo.mp4")
    full = rms(samples, 0.5, 1.4)
    assert rms(samples, 1.5, 1.6) > 0.6 * full
    assert rms(samples, 1.9, 2.0) < 0.25 * full
    assert rms(samples, 2.05, 3.0) < 0.002


def test_render_starting_mid_fade_starts_mid_ramp(media: Path, tmp_path: Path) -> None:
    # Fade-in over composition time 0-1 s; the render starts at 0.5 s, so it opens at half level.
    tone = track(media, "tone3.wav", fade_in_duration=1.0)
    reference = mix(options(tone), media, tmp_path / "ref.mp4")
    later = mix(options(tone, start_frame=15), media, tmp_path / "later.mp4")
    assert rms(later, 0.0, 0.1) == pytest.approx(rms(reference, 0.5, 0.6), rel=0.05)
    assert rms(later, 0.2, 0.3) == pytest.approx(rms(reference, 0.7, 0.8), rel=0.05)


# --- loop, seek, rate ----------------------------------------------------------------------------


def test_loop_repeats_the_source(media: Path, tmp_path: Path) -> None:
    looped = mix(options(track(media, "tone_half.wav", loop=True)), media, tmp_path / "loop.mp4")
    once = mix(options(track(media, "tone_half.wav")), media, tmp_path / "once.mp4")
    assert rms(looped, 2.5, 3.0) > 0.05
    assert rms(once, 0.1, 0.4) > 0.05
    assert rms(once, 0.6, 3.0) < 0.002
    assert abs(last_sound(once) - 0.5) <= 1 / 30


def test_seek_skips_into_the_source(media: Path, tmp_path: Path) -> None:
    plain = mix(options(track(media, "late.wav")), media, tmp_path / "noseek.mp4")
    sought = mix(options(track(media, "late.wav", seek=1.0)), media, tmp_path / "seek.mp4")
    assert abs(onset(plain) - 1.0) <= 1 / 30
    assert onset(sought) <= 1 / 30
    assert abs(last_sound(sought) - 1.0) <= 1 / 30


def test_playback_rate_changes_the_duration(media: Path, tmp_path: Path) -> None:
    fast = mix(options(track(media, "tone2.wav", playback_rate=2)), media, tmp_path / "fast.mp4")
    assert onset(fast) <= 1 / 30
    assert abs(last_sound(fast) - 1.0) <= 0.05
    # 0.25 needs two atempo stages (0.5 x 0.5): a 0.5 s source plays for 2 s.
    slow_track = track(media, "tone_half.wav", playback_rate=0.25)
    command = mix_command(options(slow_track), media / "video.mov", tmp_path / "x.mp4", input_has_audio=False)
    assert " ".join(command).count("atempo=0.5") == 2
    slow = mix(options(slow_track), media, tmp_path / "slow.mp4")
    assert abs(last_sound(slow) - 2.0) <= 0.05


# --- length, streams, containers -----------------------------------------------------------------


@pytest.mark.parametrize(("fps", "rate", "frames"), [(30, "30", 90), (29.97, "2997/100", 90), (24, "24", 50)])
def test_audio_length_is_exactly_frames_over_fps(media: Path, tmp_path: Path, fps: float, rate: str, frames: int):
    video = make_video(tmp_path / "video.mov", frames, rate)
    expected = round(48000 * frames / fps)
    tone = track(media, "tone_half.wav", loop=True)
    opts = options(tone, frames=frames, fps=fps)
    assert total_samples(opts) == expected
    aac = mix_final(opts, video, tmp_path / "len.mp4")
    assert abs(decode(tmp_path / "len.mp4").size - expected) <= 1024
    assert aac.duration == pytest.approx(frames / fps, abs=1024 / 48000)
    # PCM has no encoder padding, so the mix itself must be sample-exact.
    mix_final(options(tone, frames=frames, fps=fps, audio_codec="pcm_s16le"), video, tmp_path / "len.mov")
    assert decode(tmp_path / "len.mov").size == expected
    assert count_video_frames(tmp_path / "len.mov") == frames


def test_no_tracks_remuxes_the_video_without_audio(media: Path, tmp_path: Path) -> None:
    out = tmp_path / "silent.mp4"
    result = mix_final(options(), media / "video.mov", out)
    assert not has_audio_stream(out)
    assert result.audio_codec is None and result.audio_tracks == 0
    assert count_video_frames(out) == count_video_frames(media / "video.mov") == 90
    # Stream copy: the decoded frames are identical.
    frames = [
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(p), "-map", "0:v", "-f", "framemd5", "-"],
                       capture_output=True, text=True, check=True).stdout.splitlines()[-90:]
        for p in (media / "video.mov", out)
    ]  # fmt: skip
    assert [line.split(",")[-1] for line in frames[0]] == [line.split(",")[-1] for line in frames[1]]
    with out.open("rb") as handle:  # +faststart: the index (moov) precedes the media data (mdat)
        head = handle.read(4096)
    assert head.find(b"moov") != -1 and (head.find(b"mdat") == -1 or head.find(b"moov") < head.find(b"mdat"))


def test_result_reports_the_output(media: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.mp4"
    result = mix_final(options(track(media, "beep.wav")), media / "video.mov", out)
    info = probe(out)
    assert result.bytes == out.stat().st_size
    assert result.duration == pytest.approx(3.0, abs=0.03)
    assert (result.video_codec, result.audio_codec, result.audio_tracks) == ("h264", "aac", 1)
    assert info.video_frames == 90 and info.audio_sample_rate == 48000
    assert result.seconds > 0
    assert list(tmp_path.iterdir()) == [out]  # no partial file, no filter script left behind


def test_tracks_outside_the_render_give_exact_silence(media: Path, tmp_path: Path) -> None:
    # Starts after the render ends: no track is audible, but the output still has its audio stream.
    out = tmp_path / "late.mov"
    opts = options(track(media, "beep.wav", offset=5.0), audio_codec="pcm_s16le")
    result = mix_final(opts, media / "video.mov", out)
    samples = decode(out)
    assert (result.audio_codec, result.audio_tracks) == ("pcm_s16le", 0)
    assert samples.size == 144000 and not np.any(samples)


def test_input_audio_is_mixed_in(media: Path, tmp_path: Path) -> None:
    source = decode(media / "video_with_audio.mov")
    page_only = mix(options(), media, tmp_path / "page.mp4", video="video_with_audio.mov")
    assert rms(page_only, 0.5, 2.5) == pytest.approx(rms(source, 0.5, 2.5), rel=0.03)
    # Plus a 1 kHz track from 1.5 s: two uncorrelated equal tones add up to sqrt(2) times the level.
    both = mix(
        options(track(media, "tone1k.wav", offset=1.5)), media, tmp_path / "both.mp4", video="video_with_audio.mov"
    )
    assert mix_final(options(), media / "video_with_audio.mov", tmp_path / "r.mp4").audio_tracks == 1
    assert rms(both, 0.5, 1.4) == pytest.approx(rms(source, 0.5, 1.4), rel=0.03)
    assert rms(both, 1.6, 2.9) / rms(both, 0.5, 1.4) == pytest.approx(np.sqrt(2), rel=0.05)
    assert abs(decode(tmp_path / "both.mp4").size - 144000) <= 1024


def test_webm_output_gets_opus(media: Path, tmp_path: Path) -> None:
    opts = options(track(media, "beep.wav"), frames=10)
    assert output_audio_codec("aac", Path("x.webm")) == "libopus"
    assert output_audio_codec("aac", Path("x.mp4")) == "aac"
    command = mix_command(opts, media / "v.mkv", tmp_path / "out.webm", input_has_audio=False)
    assert command[command.index("-c:a") + 1] == "libopus"
    assert "-movflags" not in command
    video = tmp_path / "vp9.mkv"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30", "-frames:v", "10", "-c:v", "libvpx-vp9",
        "-deadline", "realtime", "-cpu-used", "8", video,
    )  # fmt: skip
    result = mix_final(opts, video, tmp_path / "out.webm")
    assert (result.video_codec, result.audio_codec) == ("vp9", "opus")


# --- failures ------------------------------------------------------------------------------------


def test_undecodable_audio_names_the_file_and_leaves_nothing(media: Path, tmp_path: Path) -> None:
    bad = tmp_path / "assets" / "bad.wav"
    bad.parent.mkdir()
    bad.write_text("this is not audio\n", encoding="utf-8")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    opts = options(track(media, "beep.wav"), AudioTrack.model_validate({"path": str(bad)}))
    with pytest.raises(RenderError, match=r"bad\.wav"):
        mix_final(opts, media / "video.mov", out_dir / "final.mp4")
    assert list(out_dir.iterdir()) == []


def test_ffmpeg_failure_names_the_output_and_leaves_nothing(media: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    opts = options(track(media, "beep.wav"), audio_codec="no_such_encoder")
    with pytest.raises(RenderError, match=r"final\.mp4") as caught:
        mix_final(opts, media / "video.mov", out_dir / "final.mp4")
    assert "no_such_encoder" in str(caught.value)
    assert list(out_dir.iterdir()) == []  # no partial file, no filter script
