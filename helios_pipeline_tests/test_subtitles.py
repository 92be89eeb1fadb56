"""Subtitles: SRT parsing and validation, the per-chunk shift, and cues burned in on the global timeline.

The render tests burn cues into a black page and read back, frame by frame, whether the bottom
band holds text: a cue must show in exactly the frames whose time lies inside it, in a chunked
render (cues in later chunks, one straddling a seam) as in a single chunk.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from helios_pipeline.engine.chunk import render_chunk
from helios_pipeline.engine.subtitles import chunk_cues, chunk_srt, cue_frames, subtitles_filter
from helios_pipeline.engine.tools import ffmpeg_path
from helios_pipeline.orchestrator import RenderOrchestrator
from helios_pipeline.plan import RenderChunk
from helios_pipeline.spec import SpecError, load_spec, validate_spec
from helios_pipeline.srt import Cue, SrtError, parse_srt, read_srt
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import decode_gray_frames

SIDE = 256
FPS = 30

# cue 2 straddles the chunk seam at 2.0 s (frame 60) of a 90-frame render in 3 chunks;
# cue 3 has times that fall between frames (2.61 s is frame 78.3, 2.89 s is frame 86.7)
SRT = """\ufeff1
00:00:00,500 --> 00:00:01,200
First cue

2
00:00:01,900 --> 00:00:02,400
Across the seam
two lines

3
00:00:02,610 --> 00:00:02,890
<i>Third</i>
"""
# frames n with start <= n / 30 < end
CUE_FRAMES = set(range(15, 36)) | set(range(57, 72)) | set(range(79, 87))


def _band_lit(video: Path) -> list[bool]:
    """Per frame: does the bottom band (where subtitles go) hold bright text; the top must stay dark."""
    frames = decode_gray_frames(video, side=SIDE)
    top, bottom = frames[:, : SIDE // 2], frames[:, SIDE * 5 // 8 :]
    assert (top > 100).sum(axis=(1, 2)).max() == 0, "bright pixels outside the subtitle band"
    return [bool(count > 40) for count in (bottom > 128).sum(axis=(1, 2))]


# -- parsing -------------------------------------------------------------------------------


def test_parse_srt_reads_times_and_text() -> None:
    cues = parse_srt(SRT.replace("\n", "\r\n"))
    assert [(c.number, c.start_ms, c.end_ms) for c in cues] == [(1, 500, 1200), (2, 1900, 2400), (3, 2610, 2890)]
    assert cues[1].lines == ("Across the seam", "two lines")
    assert parse_srt("") == [] and parse_srt("\n\n") == []
    long = parse_srt("7\n10:02:03.04 --> 10:02:05,999  X1:10 X2:20\nhi\n")
    assert (long[0].number, long[0].start_ms, long[0].end_ms) == (7, 36123040, 36125999)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1\n00:00:01,000 --> 00:00:02,000\nok\n\nsecond\n00:00:03,000 --> 00:00:04,000\nx\n", "cue 2 (line 5)"),
        ("1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:03,000 -> 00:00:04,000\nx\n", "cue 2 (line 6)"),
        ("1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:03,000 --> 00:00:02,000\nx\n", "ends at or before"),
        ("1\n00:00:01,000 --> 00:00:02,000\nok\n\n3\n00:61:00,000 --> 01:00:00,000\nx\n", "cue 3 (line 6)"),
        ("1\n00:00:01,000 --> 00:00:02,000\nok\n\n4\n", "cue 4 (line 5): missing the timing line"),
    ],
)
def test_malformed_srt_names_the_cue(text: str, message: str) -> None:
    with pytest.raises(SrtError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_srt(text)


def test_spec_validates_the_subtitle_file(tmp_path: Path) -> None:
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "good.srt").write_text(SRT, encoding="utf-8")
    (tmp_path / "subs" / "bad.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\nnot a time\nx\n")
    (tmp_path / "subs" / "latin1.srt").write_bytes("1\n00:00:01,000 --> 00:00:02,000\ncaf\xe9\n".encode("latin-1"))
    spec_file = tmp_path / "spec.yaml"
    base = {"composition": str(COMPOSITIONS / "black"), "width": 64, "height": 64, "fps": 30, "frame_count": 3}
    spec_file.write_text(yaml.safe_dump({**base, "subtitles": "subs/good.srt"}), encoding="utf-8")
    assert load_spec(spec_file).subtitles == tmp_path / "subs" / "good.srt"  # relative to the spec file

    def error(path: str) -> str:
        with pytest.raises(SpecError) as caught:
            load_spec(spec_file, [f"subtitles={path}"])
        return str(caught.value)

    bad = error("subs/bad.srt")
    assert f"{spec_file}: subtitles: " in bad and str(tmp_path / "subs" / "bad.srt") in bad and "cue 2" in bad
    assert "subtitle file not found" in error("subs/missing.srt")
    assert "not UTF-8" in error("subs/latin1.srt")
    with pytest.raises(SpecError, match="subtitles: subtitles are burned into the picture"):
        load_spec(spec_file, ["mode=canvas", "video_codec=copy"])  # a copied stream cannot carry them
    # the worker re-validates the dumped spec: the absolute path survives the round trip
    spec = load_spec(spec_file)
    assert validate_spec(spec.to_json_dict(), base_dir=Path("/"), source="dump") == spec


# -- the shift per chunk -------------------------------------------------------------------


def test_cue_frames_are_the_frames_inside_the_cue() -> None:
    cues = parse_srt(SRT)
    shown = set().union(*(set(cue_frames(cue, Fraction(FPS))) for cue in cues))
    assert shown == CUE_FRAMES
    # 29.97 fps: frame n is at n * 1001 / 30000 s
    cue = Cue(number=1, start_ms=1001, end_ms=2002, lines=("x",))
    assert cue_frames(cue, Fraction(30000, 1001)) == range(30, 60)


def test_chunk_cues_shift_clip_and_drop() -> None:
    cues = parse_srt(SRT)
    rate = Fraction(FPS)
    first = chunk_cues(cues, rate, 0, 30)
    assert [c.number for *_, c in first] == [1]
    # chunk 2 (frames 30..59): cue 1 straddles its start (frames 30..35), cue 2 starts at frame 57
    second = chunk_cues(cues, rate, 30, 30)
    assert [(start, end, c.number) for start, end, c in second] == [(0, 183, 1), (883, 983, 2)]
    # chunk 3 (frames 60..89): cue 2 straddles the seam (frames 60..71), cue 3 is frames 79..86
    third = chunk_cues(cues, rate, 60, 30)
    assert [(start, end, c.number) for start, end, c in third] == [(0, 383, 2), (617, 883, 3)]
    assert chunk_cues(cues, rate, 90, 30) == []
    # a cue between two frames (1.010-1.030 s; frames 30 and 31 are at 1.000 and 1.033 s) shows nowhere
    assert chunk_cues([Cue(1, 1010, 1030, ("between frames",))], rate, 0, 90) == []
    assert chunk_cues([Cue(1, 1000, 2000, ())], rate, 0, 90) == []  # no text


def _burn(srt: Path, frames: int) -> list[bool]:
    """Burn ``srt`` into a black clip of ``frames`` frames at 30 fps with FFmpeg only."""
    output = srt.parent / "clip.mkv"
    subprocess.run(
        [
            ffmpeg_path(), "-v", "error", "-y", "-f", "lavfi", "-i", f"color=black:s={SIDE}x{SIDE}:r={FPS}",
            "-frames:v", str(frames), "-vf", subtitles_filter(srt), "-c:v", "libx264", "-crf", "10", str(output),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return _band_lit(output)


def test_chunk_srt_burns_the_chunk_range_and_escapes_any_path(tmp_path: Path) -> None:
    """FFmpeg only: each chunk's own SRT lights exactly the chunk's cue frames; an awkward
    folder name (quotes, colon, comma, brackets, semicolon, backslash) survives the filtergraph."""
    source = tmp_path / "global.srt"
    source.write_text(SRT, encoding="utf-8")
    folder = tmp_path / "it's a [work]; dir, c:\\x"
    lit: list[bool] = []
    for start in (0, 30, 60):
        output = folder / f"chunk_{start:04d}.mov"
        with chunk_srt(source, output, Fraction(FPS), start, 30) as srt:
            assert srt is not None and srt.parent == folder
            lit += _burn(srt, 30)
        assert not srt.exists(), "the chunk's SRT is removed afterwards"
    assert [n for n, on in enumerate(lit) if on] == sorted(CUE_FRAMES)
    with chunk_srt(source, folder / "chunk.mov", Fraction(FPS), 90, 30) as srt:
        assert srt is None  # no cue in the range: nothing to burn


# -- real renders --------------------------------------------------------------------------


def _render(srt: Path, output: Path, **options: object) -> Path:
    result = RenderOrchestrator.render(
        str(COMPOSITIONS / "black"), output, width=SIDE, height=SIDE, fps=FPS, subtitles=str(srt), **options
    )
    assert not result.plan.work_dir.exists()
    return result.output


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", [3, 1])
def test_cues_show_on_the_global_timeline(concurrency: int, tmp_path: Path) -> None:
    srt = tmp_path / "subs.srt"
    srt.write_text(SRT, encoding="utf-8")
    lit = _band_lit(_render(srt, tmp_path / "out.mp4", frame_count=90, concurrency=concurrency))
    assert len(lit) == 90
    assert [n for n, on in enumerate(lit) if on] == sorted(CUE_FRAMES)


@pytest.mark.slow
def test_cues_follow_start_frame(tmp_path: Path) -> None:
    """Frames 20..79 in two chunks (seam at 50): cue 1 straddles the render's start, cue 3 its end."""
    srt = tmp_path / "subs.srt"
    srt.write_text(SRT.replace("00:00:02,890", "00:00:03,500"), encoding="utf-8")  # cue 3: frames 79..104
    lit = _band_lit(_render(srt, tmp_path / "out.mp4", start_frame=20, frame_count=60, concurrency=2))
    expected = (set(range(15, 36)) | set(range(57, 72)) | {79}) & set(range(20, 80))
    assert [20 + n for n, on in enumerate(lit) if on] == sorted(expected)


@pytest.mark.slow
def test_chunk_leaves_no_subtitle_file_behind(tmp_path: Path) -> None:
    srt = tmp_path / "subs.srt"
    srt.write_text(SRT, encoding="utf-8")
    spec = validate_spec(
        {"composition": str(COMPOSITIONS / "black"), "width": SIDE, "height": SIDE, "fps": FPS, "frame_count": 90,
         "subtitles": str(srt)},
        base_dir=tmp_path,
        source="test",
    )  # fmt: skip
    work = tmp_path / "work"
    chunk = RenderChunk(id=1, start_frame=55, frame_count=10, output_file=work / "chunk_0001.mov")
    render_chunk(spec, chunk)
    assert sorted(p.name for p in work.iterdir()) == ["chunk_0001.mov"]
    assert [55 + n for n, on in enumerate(_band_lit(chunk.output_file)) if on] == [57, 58, 59, 60, 61, 62, 63, 64]


def test_read_srt_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.srt"
    path.write_text("1\n00:00:01,000 --> 00:00:00,500\nx\n", encoding="utf-8")
    with pytest.raises(SrtError, match=r"x\.srt: cue 1 \(line 2\): ends at or before its start"):
        read_srt(path)
