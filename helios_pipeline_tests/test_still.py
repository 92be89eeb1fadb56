"""Stills and posters: one frame of a render as an image, exactly as the video shows it.

The frame-index pages paint their own frame number, so a still proves which frame it is by being
decoded; it is also compared pixel by pixel with the video's decoded frame (within codec noise).
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import dagster as dg
import numpy as np
import psutil
import pytest
import yaml

from helios_pipeline.cli import main
from helios_pipeline.dagster_defs.assets import chunk_video, concat_video, mixed_video, render_plan
from helios_pipeline.dagster_defs.previews import embedded_image
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.engine.errors import PageError, RenderError
from helios_pipeline.engine.tools import ffmpeg_path, ffprobe_path
from helios_pipeline.fingerprint import render_fingerprint
from helios_pipeline.frame_ref import FrameError, parse_frame
from helios_pipeline.orchestrator import RenderOrchestrator, RenderResult
from helios_pipeline.spec import SpecError, validate_spec
from helios_pipeline.stills import StillError, render_still
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import cell_bits, decode_gray_frames, frame_indices
from helios_pipeline_tests.helpers import (
    assert_nothing_left,
    chunk_key,
    frame_index_page,
    latest_metadata,
    register,
    run,
    wait_for,
    write_spec,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
START = 100
FRAMES = 24
VIDEO = {"width": 128, "height": 128, "fps": 30, "frame_count": FRAMES, "start_frame": START, "crf": 12}
"""frame_css from composition frame 100 on: frame n of the video paints index 100 + n."""


def index_of(image: Path) -> int:
    """The frame index a frame-index page painted into ``image``."""
    (frame,) = decode_gray_frames(image)
    return sum(bit << k for k, bit in enumerate(cell_bits(frame)))


def assert_matches_video_frame(image: Path, video: Path, n: int) -> None:
    """``image`` is the video's frame ``n``: within codec noise of it, and farther from its neighbours."""
    frames = decode_gray_frames(video, side=128).astype(np.int16)
    (still,) = decode_gray_frames(image, side=128).astype(np.int16)
    distance = [float(np.abs(still - frame).mean()) for frame in frames]
    assert distance[n] < 3.0, f"still differs from video frame {n} beyond codec noise: {distance[n]:.2f}"
    neighbours = [distance[k] for k in (n - 1, n + 1) if 0 <= k < len(frames)]
    assert all(distance[n] < d for d in neighbours), f"a neighbour of frame {n} is closer: {distance}"


def browsers() -> list[str]:
    """Chromium processes started by this test process (the still's browser runs as our descendant)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "chrom" in process.name().lower() and process.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{process.pid} {process.name()}")
    return found


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> RenderResult:
    """frame_css in 2 chunks with a poster at 0.5 s (frame 15)."""
    folder = tmp_path_factory.mktemp("video")
    return RenderOrchestrator.render(
        str(COMPOSITIONS / "frame_css"), folder / "clip.mp4", concurrency=2, poster_frame="0.5s", **VIDEO
    )


# --- frame references -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fps", "frame"),
    [
        (75, 30, 75),
        ("75", 30, 75),
        ("2.5s", 30, 75),
        ("2.5 s", 30, 75),
        ("2.5s", 29.97, 74),  # 74.925: the frame on screen at 2.5 s
        ("0s", 24, 0),
        ("0.3333333333s", 30, 10),  # float noise just below a frame boundary still names that frame
        (".5s", 60, 30),
    ],
)
def test_frame_references_name_the_frame_on_screen(value: object, fps: float, frame: int) -> None:
    assert parse_frame(value, fps, 1000) == frame  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("-1", "'-1' is negative"),
        ("100", "'100' is past the end of the video"),
        ("3.34s", "'3.34s' (frame 100) is past the end"),
        ("-0.5s", "'-0.5s' is before the start"),
        ("1.5", "'1.5' is not a frame"),
        ("frame 3", "'frame 3' is not a frame"),
        (True, "True is not a frame"),
    ],
)
def test_bad_frame_references_say_why_and_the_valid_range(value: object, reason: str) -> None:
    with pytest.raises(FrameError) as raised:
        parse_frame(value, 30, 100)  # type: ignore[arg-type]
    assert reason in str(raised.value)
    if "not a frame" not in reason:
        assert "frames 0 to 99 (0s to 3.300s at 30 fps)" in str(raised.value)


def test_poster_frame_is_validated_against_the_frame_count_and_stored_as_a_frame(tmp_path: Path) -> None:
    base = {"composition": str(COMPOSITIONS / "black"), "width": 64, "height": 64, "fps": 30, "frame_count": 30}
    spec = validate_spec({**base, "posterFrame": "0.5s"}, base_dir=tmp_path, source="spec.yaml")
    assert spec.poster_frame == 15 and spec.to_json_dict()["poster_frame"] == 15
    with pytest.raises(SpecError, match=r"spec.yaml: poster_frame: '30' is past the end of the video; valid: frames 0"):
        validate_spec({**base, "poster_frame": 30}, base_dir=tmp_path, source="spec.yaml")
    with pytest.raises(SpecError, match=r"poster_frame: 2.5 is not a frame"):
        validate_spec({**base, "poster_frame": 2.5}, base_dir=tmp_path, source="spec.yaml")
    # a poster changes nothing in the video: the data version stays
    plain = validate_spec(base, base_dir=tmp_path, source="spec.yaml")
    assert render_fingerprint(spec) == render_fingerprint(plain)


# --- stills equal the video's frames ----------------------------------------------------------------


@pytest.mark.slow
def test_the_poster_is_the_videos_frame_beside_it(rendered: RenderResult) -> None:
    video = Path(rendered.output)
    assert rendered.poster == video.with_name("clip.poster.png")
    assert rendered.poster.read_bytes()[:8] == PNG_MAGIC
    assert frame_indices(video) == list(range(START, START + FRAMES))
    assert index_of(rendered.poster) == START + 15
    assert_matches_video_frame(rendered.poster, video, 15)
    assert files_in(video.parent) == ["clip.contact.png", "clip.mp4", "clip.poster.png"]


@pytest.mark.slow
@pytest.mark.parametrize(("frame", "n", "image"), [(0, 0, "first.png"), ("23", 23, "last.jpg"), ("0.25s", 7, "t.jpeg")])
def test_a_still_equals_the_videos_frame(
    rendered: RenderResult, tmp_path: Path, frame: object, n: int, image: str
) -> None:
    output = tmp_path / image
    result = render_still(str(COMPOSITIONS / "frame_css"), output, frame=frame, **VIDEO)
    assert (result.output, result.frame, result.composition_frame) == (output, n, START + n)
    assert output.read_bytes()[:3] == (PNG_MAGIC[:3] if image.endswith(".png") else JPEG_MAGIC)
    assert index_of(output) == START + n
    assert_matches_video_frame(output, Path(rendered.output), n)
    assert files_in(tmp_path) == [image]


@pytest.mark.slow
@pytest.mark.parametrize("page", ["frame_raf", "helios"])
def test_stills_of_other_frame_index_pages_show_their_frame(
    page: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """rAF and a real @helios-project/core page (seeked through helios.seek), started at frame 100."""
    composition = request.getfixturevalue("helios_core_composition") if page == "helios" else COMPOSITIONS / page
    output = tmp_path / "still.png"
    render_still(str(composition), output, frame="0.2s", **VIDEO)
    assert index_of(output) == START + 6


@pytest.mark.slow
def test_the_cli_writes_a_still_from_a_spec(tmp_path: Path) -> None:
    spec = tmp_path / "clip.yaml"
    spec.write_text(yaml.safe_dump({"composition": str(COMPOSITIONS / "frame_css"), **VIDEO}), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "helios_pipeline.cli", "still", str(spec), "--frame", "0.5s", "-o", "poster.jpg"],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "frame 15 (composition frame 115" in result.stderr
    poster = tmp_path / "poster.jpg"
    assert poster.read_bytes()[:3] == JPEG_MAGIC and index_of(poster) == START + 15
    assert files_in(tmp_path) == ["clip.yaml", "poster.jpg"], "nothing else written (no video, no work folder)"


@pytest.mark.slow
def test_a_canvas_still_reads_the_canvas_at_the_frame(tmp_path: Path) -> None:
    output = tmp_path / "canvas.png"
    result = render_still(
        str(COMPOSITIONS / "frame_canvas"), output, frame="1s", mode="canvas", width=128, height=128, fps=30,
        frame_count=60, video_codec="copy", output=str(tmp_path / "v.mp4"),
    )  # fmt: skip
    assert result.capture_method.startswith("canvas/png") and index_of(output) == 30


@pytest.mark.slow
def test_a_transparent_render_gives_a_transparent_png(tmp_path: Path) -> None:
    output = tmp_path / "alpha.png"
    render_still(
        str(COMPOSITIONS / "transparent"), output, frame=0, width=64, height=64, fps=30, frame_count=2,
        video_codec="libvpx-vp9", pixel_format="yuva420p", output=str(tmp_path / "v.webm"),
    )  # fmt: skip
    raw = subprocess.run(
        [ffmpeg_path(), "-v", "error", "-i", str(output), "-pix_fmt", "rgba", "-f", "rawvideo", "-"],
        capture_output=True,
        check=True,
    ).stdout
    rgba = np.frombuffer(raw, dtype=np.uint8).reshape(64, 64, 4)
    red, empty = rgba[16, 16], rgba[16, 48]
    assert red[3] == 255 and red[0] > 200 and red[1] < 40, red
    assert empty[3] == 0, empty
    with pytest.raises(StillError, match="JPEG has no alpha channel"):
        render_still(
            str(COMPOSITIONS / "transparent"), tmp_path / "alpha.jpg", frame=0, width=64, height=64, fps=30,
            frame_count=2, video_codec="libvpx-vp9", pixel_format="yuva420p", output=str(tmp_path / "v.webm"),
        )  # fmt: skip


@pytest.mark.slow
def test_a_still_shows_the_subtitle_of_its_frame(tmp_path: Path) -> None:
    srt = tmp_path / "subs.srt"
    srt.write_text("1\n00:00:00,500 --> 00:00:01,000\nHELLO WORLD\n", encoding="utf-8")
    options = {"width": 128, "height": 128, "fps": 30, "frame_count": 40, "subtitles": str(srt)}
    lit = {}
    for frame in (14, 15):  # the cue starts at 0.5 s: frame 15
        output = tmp_path / f"f{frame}.png"
        render_still(str(COMPOSITIONS / "black"), output, frame=frame, **options)
        (gray,) = decode_gray_frames(output, side=128)
        lit[frame] = int((gray[80:] > 128).sum())
        assert (gray[:64] > 100).sum() == 0, "bright pixels outside the subtitle band"
    assert lit[14] == 0 and lit[15] > 20, lit
    assert files_in(tmp_path) == ["f14.png", "f15.png", "subs.srt"], "the frame's SRT and capture are removed"


# --- bad input: exit 2, nothing written ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "named"),
    [
        ("-1", "--frame '-1' is negative"),
        ("24", "--frame '24' is past the end of the video"),
        ("0.8s", "--frame '0.8s' (frame 24) is past the end"),
        ("ten", "--frame 'ten' is not a frame"),
    ],
)
def test_bad_frames_exit_2_naming_the_flag_value_and_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], frame: str, named: str
) -> None:
    source = str(COMPOSITIONS / "frame_css")
    flags = ["--width", "64", "--height", "64", "--fps", "30", "--frames", str(FRAMES)]
    assert main(["still", source, *flags, f"--frame={frame}", "-o", str(tmp_path / "x.png")]) == 2
    message = " ".join(capsys.readouterr().err.split())
    assert named in message
    if "not a frame" not in named:
        assert "valid: frames 0 to 23 (0s to 0.767s at 30 fps)" in message
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("name", ["x.gif", "x", "x.webp"])
def test_an_output_that_is_not_png_or_jpeg_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    source = str(COMPOSITIONS / "frame_css")
    flags = ["--width", "64", "--height", "64", "--fps", "30", "--frames", "5"]
    assert main(["still", source, *flags, "--frame", "1", "-o", str(tmp_path / name)]) == 2
    message = " ".join(capsys.readouterr().err.split())
    assert f"{tmp_path / name}: a still is written as .png, .jpg or .jpeg" in message
    assert files_in(tmp_path) == []


def test_an_s3_still_output_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(StillError, match=r"s3://bucket/x\.png: a still is written to a local file"):
        render_still(str(COMPOSITIONS / "black"), "s3://bucket/x.png", frame=0, width=8, height=8, fps=1, frame_count=1)
    assert not Path("s3:").exists()


@pytest.mark.slow
def test_a_page_that_throws_leaves_no_image_and_no_browser(tmp_path: Path) -> None:
    output = tmp_path / "x.png"
    with pytest.raises(PageError, match="composition exploded on load"):
        render_still(str(COMPOSITIONS / "throws"), output, frame=2, width=64, height=64, fps=30, frame_count=10)
    assert files_in(tmp_path) == []
    assert browsers() == [], "the still's Chromium outlived it"


# --- the poster through Dagster ------------------------------------------------------------------------------


@pytest.mark.slow
def test_mixed_video_writes_the_poster_and_shows_it(tmp_path: Path) -> None:
    storage = RenderStorage(location=str(tmp_path / "storage"), keep_days="forever")
    spec_file = write_spec(
        tmp_path / "specs", "poster", COMPOSITIONS / "frame_css", frame_count=12, concurrency=1, poster_frame=9
    )
    with dg.instance_for_test() as instance:
        key = register(instance, storage, spec_file)
        run(instance, storage, [render_plan], key)
        run(instance, storage, [chunk_video], chunk_key(key, "000"))
        run(instance, storage, [concat_video, mixed_video], key)
        metadata = latest_metadata(instance, mixed_video.key, key)
    poster = Path(metadata["poster"].value)
    video = Path(metadata["path"].value)
    assert poster == video.with_name("poster.poster.png") and poster.read_bytes()[:8] == PNG_MAGIC
    assert index_of(poster) == 9
    assert_matches_video_frame(poster, video, 9)
    preview = metadata["poster_preview"]
    assert isinstance(preview, dg.MarkdownMetadataValue)
    prefix = "![poster.poster.png](data:image/jpeg;base64,"
    assert preview.value.startswith(prefix) and preview.value.endswith(")")
    assert len(preview.value) < 150_000
    embedded = tmp_path / "embedded.jpg"
    embedded.write_bytes(base64.b64decode(preview.value.removeprefix(prefix).removesuffix(")")))
    assert embedded.read_bytes()[:3] == JPEG_MAGIC
    assert index_of(embedded) == 9, "the embedded preview is the poster, readable"


@pytest.mark.slow
def test_an_s3_output_gets_its_poster_uploaded_beside_it(
    s3_bucket: tuple[str, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket, env = s3_bucket
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = RenderOrchestrator.render(
        str(COMPOSITIONS / "frame_css"), f"s3://{bucket}/v/clip.mp4", width=64, height=64, fps=30, frame_count=6,
        concurrency=1, poster_frame=4,
    )  # fmt: skip
    assert result.poster == f"s3://{bucket}/v/clip.poster.png"
    client = boto3.client("s3")
    listed = sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert listed == ["v/clip.contact.png", "v/clip.mp4", "v/clip.poster.png"]
    client.download_file(bucket, "v/clip.poster.png", str(tmp_path / "poster.png"))
    assert index_of(tmp_path / "poster.png") == 4
    assert not result.plan.work_dir.exists(), "the local copies are gone"


@pytest.mark.slow
def test_sigterm_stops_a_still_leaving_no_image_and_no_browser(tmp_path: Path) -> None:
    """A still stuck on a page that never becomes ready: SIGTERM ends it with 130, its browser with it."""
    command = [
        sys.executable, "-m", "helios_pipeline.cli", "still", str(COMPOSITIONS / "stuck"), "--width", "64",
        "--height", "64", "--fps", "30", "--frames", "10", "--frame", "3", "-o", "stuck.png",
    ]  # fmt: skip
    cli = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        started = wait_for(
            lambda: [p for p in psutil.Process(cli.pid).children(recursive=True) if "chrom" in p.name().lower()],
            timeout=60,
            what="the still's Chromium",
            interval=0.2,
        )
        time.sleep(1.0)  # into the seek that never ends
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=10) == 130, cli.stderr.read() if cli.stderr else ""
    finally:
        if cli.poll() is None:
            cli.kill()
    assert files_in(tmp_path) == []
    _, alive = psutil.wait_procs(started, timeout=5)
    assert alive == [], f"the still's Chromium outlived it: {alive}"


def test_embedded_previews_shrink_until_they_fit(tmp_path: Path) -> None:
    """A noisy picture: each budget gets the widest preview under it, never a broken one."""
    picture = tmp_path / "noisy.png"
    subprocess.run(
        [ffmpeg_path(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=960x540,noise=alls=60:allf=t",
         "-frames:v", "1", str(picture)],
        check=True,
    )  # fmt: skip
    widths = {}
    for budget in (150_000, 30_000):
        markdown = embedded_image(picture, max_bytes=budget).value
        assert markdown.startswith("![noisy.png](data:image/jpeg;base64,") and len(markdown) <= budget
        jpeg = tmp_path / f"preview-{budget}.jpg"
        jpeg.write_bytes(base64.b64decode(markdown.split(",", 1)[1].removesuffix(")")))
        probe_result = subprocess.run(
            [ffprobe_path(), "-v", "error", "-show_entries", "stream=width",
             "-of", "csv=p=0", str(jpeg)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        widths[budget] = int(probe_result.stdout.strip())
    assert widths[30_000] < widths[150_000] <= 960, widths
    with pytest.raises(RenderError, match=r"noisy\.png: no JPEG of it fits in"):
        embedded_image(picture, max_bytes=100)


@pytest.mark.slow
def test_a_poster_that_fails_leaves_no_video_and_no_previews(tmp_path: Path) -> None:
    """A page that only works when played from frame 0: its chunk renders, its poster (seeked straight
    to frame 5) throws, and the render fails as a whole: no video, contact sheet, poster or work folder."""
    page = frame_index_page(
        tmp_path / "stateful",
        'window.__first ??= frame; if (window.__first !== 0) throw new Error("started at frame " + frame);',
    )
    output = tmp_path / "out" / "clip.mp4"
    with pytest.raises(PageError, match="started at frame 5"):
        RenderOrchestrator.render(
            str(page), output, width=64, height=64, fps=30, frame_count=8, concurrency=1, poster_frame=5
        )
    assert_nothing_left(output)
    assert browsers() == [], "the poster's Chromium outlived it"
