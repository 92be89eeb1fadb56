"""Validation and limits before anything renders (issue 9): frame rates, what the encoder and pixel format
require, FFmpeg's encoders, audio tracks probed, SRT files, ``file://`` compositions, and the deployment's
limits on frames, duration and pixels, for the CLI (local and Dagster), registration, the inbox sensor
and a partition added in the UI.

Every refusal is exit 2 with a message naming the field (and the limit and its setting), and leaves
nothing behind: no output, no render folder, no partition, and no browser started (HELIOS_CHROMIUM
points at a stand-in that leaves a mark if it is ever launched).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from helios_pipeline.codec_limits import frame_problems
from helios_pipeline.dagster_defs import sensors
from helios_pipeline.dagster_defs.assets import render_plan, renders
from helios_pipeline.dagster_defs.inbox import Inbox
from helios_pipeline.dagster_defs.runner import submit
from helios_pipeline.dagster_defs.settings import Settings
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.limits import RenderLimits, parse_duration, parse_pixels
from helios_pipeline.spec import SpecError, resolve_spec
from helios_pipeline_tests.helpers import deployment_processes

GOOD = {"name": "promo", "composition": "site", "width": 64, "height": 36, "fps": 30, "frame_count": 6}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A composition, an audio file that is not audio, a video without sound and a broken SRT."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<!doctype html><title>limits</title>", encoding="utf-8")
    (tmp_path / "notes.wav").write_text("these are notes, not sound\n", encoding="utf-8")
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi", "-i", "color=s=32x32:r=5",
         "-frames:v", "2", str(tmp_path / "silent.mp4")],
        check=True,
    )  # fmt: skip
    (tmp_path / "captions.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nHi\n\n2\nsoon\nThere\n", "utf-8")
    return tmp_path


@pytest.fixture
def browser_mark(tmp_path: Path) -> Iterator[Path]:
    """A HELIOS_CHROMIUM stand-in that writes a mark and fails: a refused render never launches it."""
    mark = tmp_path / "browser-started"
    stand_in = tmp_path / "fake-chromium"
    stand_in.write_text(f"#!/bin/sh\ntouch {mark}\nexit 1\n", encoding="utf-8")
    stand_in.chmod(0o755)
    yield stand_in
    assert not mark.exists(), "a browser was started for a refused render"


def run_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith(("DAGSTER_", "HELIOS_"))}
    return subprocess.run(
        [sys.executable, "-m", "helios_pipeline.cli", *args],
        cwd=cwd,
        env={**base, "COLUMNS": "80", "TERM": "dumb", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def tree(folder: Path) -> set[str]:
    return {str(Path(root, name).relative_to(folder)) for root, dirs, files in os.walk(folder) for name in dirs + files}


def write_spec(folder: Path, data: dict, name: str = "promo.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# (spec changes, environment, what the error line must say after "<spec file>: ")
CASES = {
    "tiny fps": ({"fps": 0.0001}, {}, ["fps: 0.0001 is outside the supported range of 1 to 240"]),
    "huge width": ({"width": 100000}, {}, ["width: 100000 exceeds libx264's maximum of 16384"]),
    "odd size with yuv420p": (
        {"width": 65, "height": 37},
        {},
        [
            "width: 65 is odd: pixel_format yuv420p with libx264 needs an even width; use 64 or 66",
            "height: 37 is odd: pixel_format yuv420p with libx264 needs an even height; use 36 or 38",
        ],
    ),
    "beyond H.264 level 6.2": (
        {"width": 8192, "height": 8192, "frame_count": 1},
        {"HELIOS_MAX_PIXELS": "16384x16384"},
        ["width, height: 8192x8192 is 262144 macroblocks a frame, more than H.264 level 6.2"],
    ),
    "unknown pixel format": ({"pixel_format": "yuv42p"}, {}, ["pixel_format: libx264 cannot encode yuv42p"]),
    "unknown encoder": ({"video_codec": "libx246"}, {}, ["video_codec: libx246 is not an encoder this FFmpeg has"]),
    "audio track that is not audio": (
        {"audio_tracks": ["notes.wav"]},
        {},
        ["audio_tracks[0].path: not audio FFmpeg can read", "notes.wav"],
    ),
    "audio track without sound": (
        {"audio_tracks": [{"path": "silent.mp4", "volume": 0.5}]},
        {},
        ["audio_tracks[0].path: ", "silent.mp4 has no audio stream"],
    ),
    "broken subtitles": (
        {"subtitles": "captions.srt"},
        {},
        ["subtitles: not a valid SRT file: ", "captions.srt", "cue 2 (line 6)"],
    ),
    "file URL": (
        {"composition": "file://{project}/site"},
        {},
        ["composition: file:// URLs are not supported", "give the composition's path instead: {project}/site"],
    ),
    "a billion frames": (
        {"frame_count": 1_000_000_000},
        {},
        [
            "frame_count: 1000000000 frames exceed this deployment's limit of 864000 (HELIOS_MAX_FRAMES)",
            "frame_count: 9259 h 15 min 33 s of video exceeds this deployment's limit of 4 h (HELIOS_MAX_DURATION)",
        ],
    ),
    "longer than HELIOS_MAX_DURATION": (
        {"frame_count": None, "duration_in_seconds": 3},
        {"HELIOS_MAX_DURATION": "2.5s"},
        ["duration_in_seconds: 3 s of video exceeds this deployment's limit of 2.5 s (HELIOS_MAX_DURATION)"],
    ),
    "more pixels than HELIOS_MAX_PIXELS": (
        {"width": 66},
        {"HELIOS_MAX_PIXELS": "64x36"},
        ["width, height: 66x36 is 2376 pixels a frame, more than this deployment's limit of 2304 (HELIOS_MAX_PIXELS"],
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_render_local_refuses_bad_input_before_a_browser_starts(project: Path, browser_mark: Path, case: str) -> None:
    changes, env, expected = CASES[case]
    data = {key: value for key, value in {**GOOD, **changes}.items() if value is not None}
    data["composition"] = data["composition"].format(project=project)
    spec = write_spec(project, data)
    before = tree(project)

    result = run_cli("render", "--local", str(spec), cwd=project, env={**env, "HELIOS_CHROMIUM": str(browser_mark)})

    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text.format(project=project) in result.stderr, result.stderr
    assert f"{spec}: {expected[0].split(':')[0]}: " in result.stderr, "the line names the spec file, then the field"
    assert tree(project) == before, "nothing written: no output, no work folder"


def test_a_bad_limit_setting_exits_2_naming_it(project: Path, browser_mark: Path) -> None:
    spec = write_spec(project, GOOD)
    result = run_cli(
        "render",
        "--local",
        str(spec),
        cwd=project,
        env={"HELIOS_MAX_DURATION": "4 hours", "HELIOS_CHROMIUM": str(browser_mark)},
    )
    assert result.returncode == 2, result.stderr
    assert "HELIOS_MAX_DURATION: expected seconds or a duration like 4h, 90m or 1h30m, got '4 hours'" in result.stderr


@pytest.mark.parametrize("command", [["submit"], ["render"]])
def test_dagster_render_and_submit_refuse_over_a_limit_before_anything_is_registered(
    project: Path, browser_mark: Path, tmp_path: Path, command: list[str]
) -> None:
    spec = write_spec(project, {**GOOD, "frame_count": 100})
    home, storage = tmp_path / "dagster_home", tmp_path / "helios"
    env = {"DAGSTER_HOME": str(home), "HELIOS_STORAGE": str(storage), "HELIOS_MAX_FRAMES": "50",
           "HELIOS_CHROMIUM": str(browser_mark)}  # fmt: skip
    result = run_cli(*command, str(spec), cwd=project, env=env)
    assert result.returncode == 2, result.stderr
    assert f"{spec}: frame_count: 100 frames exceed this deployment's limit of 50 (HELIOS_MAX_FRAMES)" in result.stderr
    assert not storage.exists(), "no render folder, no spec snapshot"
    assert not home.exists() or not any(home.rglob("*.db")), "no Dagster instance touched, no run"
    assert deployment_processes(home) == [], "no daemon, code server or run worker started"


# --- registration, the inbox sensor and a partition added in the UI ---------------------------------


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def test_registration_refuses_before_a_partition_or_snapshot_exists(
    project: Path, instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library's ``submit`` (what the CLI, benchmarks and scripts call) refuses what resolve_spec accepted."""
    storage = tmp_path / "helios"
    monkeypatch.setenv("HELIOS_STORAGE", str(storage))
    monkeypatch.setenv("HELIOS_MAX_PIXELS", "1000")
    spec = resolve_spec(write_spec(project, GOOD))  # a valid spec: 64x36 = 2304 pixels
    with pytest.raises(SpecError) as caught:
        submit(spec, instance, source="promo.yaml")
    assert caught.value.problems[0][0] == "width, height"
    assert "limit of 1000 (HELIOS_MAX_PIXELS" in str(caught.value)
    assert instance.get_dynamic_partitions(renders.name) == []
    assert not (storage / "renders").exists()
    assert instance.get_runs() == []


def test_inbox_spec_over_a_limit_is_reported_in_the_tick_and_skipped(
    project: Path, instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    storage = RenderStorage(location=str(tmp_path / "helios"))
    monkeypatch.setattr(sensors, "SETTINGS", Settings(storage=storage.location, inbox=inbox, max_chunks=2))
    monkeypatch.setenv("HELIOS_MAX_DURATION", "1s")
    write_spec(inbox, {**GOOD, "composition": str(project / "site"), "frame_count": 60}, "long.yaml")
    resources = {"storage": storage, "inbox": Inbox(folder=str(inbox))}

    result = sensors.composition_inbox(dg.build_sensor_context(instance=instance, cursor=None, resources=resources))

    assert isinstance(result, dg.SensorResult)
    assert not result.run_requests and not result.dynamic_partitions_requests
    reason = result.skip_reason.skip_message if result.skip_reason else ""
    assert "long.yaml" in reason and "frame_count: 2 s of video exceeds this deployment's limit of 1 s" in reason
    assert "HELIOS_MAX_DURATION" in reason
    assert not (tmp_path / "helios" / "renders").exists()


def test_a_partition_added_in_the_ui_fails_its_plan_with_the_limit(
    project: Path, instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_spec(inbox, {**GOOD, "composition": str(project / "site"), "frame_count": 100}, "promo.yaml")
    storage = RenderStorage(location=str(tmp_path / "helios"))
    monkeypatch.setenv("HELIOS_MAX_FRAMES", "99")
    instance.add_dynamic_partitions(renders.name, ["promo"])  # what "Add partition" in the UI does

    result = dg.materialize(
        [render_plan],
        partition_key="promo",
        instance=instance,
        resources={"storage": storage, "inbox": Inbox(folder=str(inbox))},
        raise_on_error=False,
    )

    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    message = failure.step_failure_data.user_failure_data.description  # type: ignore[union-attr]
    assert "promo.yaml: frame_count: 100 frames exceed this deployment's limit of 99 (HELIOS_MAX_FRAMES)" in message
    assert not storage.has_spec("promo"), "no snapshot of a refused spec"
    assert instance.get_latest_materialization_event(render_plan.key) is None


# --- the tables behind the messages ---------------------------------------------------------------


def encodes(codec: str, pixel_format: str, width: int, height: int, suffix: str, tmp_path: Path) -> bool:
    """Whether the real FFmpeg encodes one frame of this size (the fact the table must match)."""
    command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt",
               "rgb24", "-s", f"{width}x{height}", "-r", "1", "-i", "/dev/zero", "-frames:v", "1", "-c:v", codec,
               "-pix_fmt", pixel_format, str(tmp_path / f"one{suffix}")]  # fmt: skip
    return subprocess.run(command, capture_output=True, check=False, timeout=120).returncode == 0


@pytest.mark.parametrize(
    ("codec", "pixel_format", "width", "height", "suffix"),
    [
        ("libx264", "yuv420p", 65, 36, ".mp4"),
        ("libx264", "yuv420p", 64, 37, ".mp4"),
        ("libx264", "yuv422p", 64, 37, ".mp4"),
        ("libx264", "yuv444p", 65, 37, ".mp4"),
        ("libx264", "yuv420p", 16384, 16, ".mp4"),
        ("libx264", "yuv420p", 16386, 16, ".mp4"),
        ("libx265", "yuv420p", 14, 16, ".mp4"),
        ("libx265", "yuv420p", 16, 16, ".mp4"),
        ("libvpx-vp9", "yuv420p", 65, 37, ".webm"),
        ("libvpx", "yuv420p", 16384, 16, ".webm"),
        ("utvideo", "yuv422p", 65, 36, ".mkv"),
        ("prores_ks", "yuv422p10le", 65, 37, ".mov"),
    ],
)
def test_the_codec_table_agrees_with_ffmpeg(
    codec: str, pixel_format: str, width: int, height: int, suffix: str, tmp_path: Path
) -> None:
    refused = frame_problems(codec, pixel_format, width, height, 30, Path(f"out{suffix}"))
    assert encodes(codec, pixel_format, width, height, suffix, tmp_path) == (not refused), refused


def test_limits_settings_parse_durations_and_sizes() -> None:
    assert [parse_duration(text) for text in ("14400", "4h", "90m", "1h30m", "45.5s", "2.5h")] == [
        14400, 14400, 5400, 5400, 45.5, 9000
    ]  # fmt: skip
    assert parse_pixels("7680x4320") == parse_pixels("33177600") == 33_177_600
    for bad in ("4 hours", "0", "-1h", "h", "4h4"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    defaults = RenderLimits.from_env({})
    assert (defaults.max_frames, defaults.max_duration_s, defaults.max_pixels) == (864_000, 14_400, 7680 * 4320)
