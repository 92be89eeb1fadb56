"""The ``helios-pipeline`` command line, run as a real process: plan output, exit codes, error messages,
and that invalid input writes nothing. No video is rendered here (the frame tests do that)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

GOOD = {"name": "promo", "composition": "site", "width": 64, "height": 36, "fps": 30, "frame_count": 12}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "helios_pipeline.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def tree(folder: Path) -> set[str]:
    return {str(Path(root, name).relative_to(folder)) for root, dirs, files in os.walk(folder) for name in dirs + files}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<!doctype html><title>cli</title>", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    (tmp_path / "music.wav").write_bytes(b"RIFF")
    return tmp_path


def write_spec(folder: Path, data: object, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def static_server(folder: Path) -> Iterator[str]:
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def assert_invalid(result: subprocess.CompletedProcess[str], *names: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    for name in names:
        assert name in result.stderr, (name, result.stderr)
    assert "Traceback" not in result.stderr
    assert "[red]" not in result.stderr, "rich markup printed literally"


# --- plan -----------------------------------------------------------------------------------------


def test_plan_prints_the_plan_as_json(project: Path) -> None:
    spec = write_spec(project, GOOD)
    before = tree(project)
    result = run_cli("plan", str(spec), cwd=project)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["total_frames"] == 12
    chunks = plan["chunks"]
    assert chunks, "at least one chunk"
    assert sum(chunk["frame_count"] for chunk in chunks) == 12
    assert chunks[0]["start_frame"] == 0
    assert plan["concat_manifest"] == [chunk["output_file"] for chunk in chunks]
    assert plan["final_output_file"] == str(project / "out" / "promo.mp4")
    assert tree(project) == before, "plan writes nothing"


def test_plan_honours_concurrency_set_and_output(project: Path) -> None:
    spec = write_spec(project, GOOD)
    result = run_cli(
        "plan",
        str(spec),
        "--concurrency",
        "5",
        "--set",
        "frame_count=23",
        "--set",
        "start_frame=100",
        "--set",
        "input_props.title=Hi there",
        "-o",
        "videos/final.mp4",
        cwd=project / "site",
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["total_frames"] == 23
    assert [(c["start_frame"], c["frame_count"]) for c in plan["chunks"]] == [
        (100, 5),
        (105, 5),
        (110, 5),
        (115, 4),
        (119, 4),
    ]
    assert plan["spec"]["input_props"] == {"title": "Hi there"}
    assert plan["spec"]["concurrency"] == 5
    # -o is relative to the working directory, not to the spec.
    assert plan["final_output_file"] == str(project / "site" / "videos" / "final.mp4")


def test_plan_flags_override_camel_case_spec_keys(project: Path) -> None:
    data = {**{k: v for k, v in GOOD.items() if k != "frame_count"}, "frameCount": 10, "startFrame": 4}
    spec = write_spec(project, data)
    result = run_cli("plan", str(spec), "--frames", "6", "--start-frame", "2", "--concurrency", "2", cwd=project)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [(c["start_frame"], c["frame_count"]) for c in plan["chunks"]] == [(2, 3), (5, 3)]


def test_plan_from_a_composition_and_flags(project: Path) -> None:
    result = run_cli(
        "plan", "site", "--width", "320", "--height", "240", "--fps", "24", "--duration", "2.2", cwd=project
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["total_frames"] == 53
    assert plan["spec"]["composition"] == str(project / "site" / "index.html")


# --- render: invalid specs exit 2 and write nothing ----------------------------------------------

INVALID_SPECS = {
    "unknown key": ({**GOOD, "framerate": 30}, "framerate"),
    "negative fps": ({**GOOD, "fps": -30}, "fps"),
    "zero width": ({**GOOD, "width": 0}, "width"),
    "missing composition": ({**GOOD, "composition": "nope.html"}, "composition"),
    "folder without index.html": ({**GOOD, "composition": "empty"}, "composition"),
    "missing audio file": ({**GOOD, "audio_tracks": ["music.wav", {"path": "gone.wav"}]}, "audio_tracks[1].path"),
    "duration and frames disagree": ({**GOOD, "duration_in_seconds": 1}, "frame_count"),
    "neither duration nor frames": ({k: v for k, v in GOOD.items() if k != "frame_count"}, "frame_count"),
    "copy without canvas mode": ({**GOOD, "video_codec": "copy"}, "video_codec"),
    "ftp composition": ({**GOOD, "composition": "ftp://example.com/site/"}, "composition"),
    "list instead of mapping": ([GOOD], "mapping"),
}


@pytest.mark.parametrize("case", list(INVALID_SPECS), ids=list(INVALID_SPECS))
def test_render_invalid_spec_exits_2_and_writes_nothing(project: Path, case: str) -> None:
    data, field = INVALID_SPECS[case]
    spec = write_spec(project, data)
    before = tree(project)
    result = run_cli("render", str(spec), cwd=project)
    assert_invalid(result, str(spec), field)
    if case != "list instead of mapping":
        assert f"{spec}: {field}: " in result.stderr, result.stderr
    assert tree(project) == before
    assert not (project / "out").exists()
    assert not (project / "out" / ".promo.mp4.helios-work").exists()


def test_render_malformed_yaml_exits_2(project: Path) -> None:
    spec = project / "spec.yaml"
    spec.write_text("name: promo\nwidth: [64\nheight: 36\n", encoding="utf-8")
    before = tree(project)
    result = run_cli("render", str(spec), cwd=project)
    assert_invalid(result, str(spec), "not valid YAML", "line 3")
    assert tree(project) == before


def test_render_missing_spec_file_exits_2(project: Path) -> None:
    result = run_cli("render", "missing.yaml", cwd=project)
    assert_invalid(result, str(project / "missing.yaml"), "not found")
    assert tree(project) == {"site", "site/index.html", "empty", "music.wav"}


def test_render_bad_set_value_exits_2(project: Path) -> None:
    spec = write_spec(project, GOOD)
    before = tree(project)
    result = run_cli("render", str(spec), "--set", "fps=-2", "--set", "height=0", cwd=project)
    assert_invalid(result, f"{spec}: fps: Input should be greater than 0", f"{spec}: height: ")
    assert tree(project) == before


def test_long_paths_in_errors_are_not_wrapped(project: Path) -> None:
    deep = project / ("a-rather-long-folder-name-" * 4).rstrip("-") / "and-another-level"
    deep.mkdir(parents=True)
    track = "a-missing-soundtrack-with-a-long-name.wav"
    spec = write_spec(deep, {**GOOD, "composition": str(project / "site"), "audio_tracks": [track]})
    result = run_cli("render", str(spec), cwd=project)
    assert_invalid(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[1].strip() == f"{spec}: audio_tracks[0].path: audio file not found: {deep / track}"


# --- render: URLs -----------------------------------------------------------------------------------


def test_render_unreachable_url_exits_2(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    result = run_cli("render", url, "--width", "64", "--height", "36", "--fps", "30", "--frames", "3", cwd=tmp_path)
    assert_invalid(result, url, "composition", "unreachable")
    assert tree(tmp_path) == set()


def test_render_url_returning_404_exits_2(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    with static_server(served) as base:
        url = f"{base}/missing/index.html"
        result = run_cli("render", url, "--width", "64", "--height", "36", "--fps", "30", "--frames", "3", cwd=work)
    assert_invalid(result, url, "404")
    assert tree(work) == set()


def test_render_spec_pointing_at_a_404_url_exits_2(project: Path) -> None:
    with static_server(project / "empty") as base:
        url = f"{base}/nothing-here.html"
        spec = write_spec(project, {**GOOD, "composition": url})
        before = tree(project)
        result = run_cli("render", str(spec), cwd=project)
    assert_invalid(result, url, "404")
    assert tree(project) == before


def test_render_invalid_url_port_exits_2(tmp_path: Path) -> None:
    url = "http://127.0.0.1:99999/"
    result = run_cli("render", url, "--width", "64", "--height", "36", "--fps", "30", "--frames", "3", cwd=tmp_path)
    assert_invalid(result, url, "composition", "Port out of range")


# --- render without a spec: flags validate the same way -----------------------------------------


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--height", "36", "--fps", "30", "--frames", "3"], ["width", "required"]),
        (["--width", "64", "--height", "36", "--frames", "3"], ["fps", "required"]),
        (["--width", "64", "--height", "36", "--fps", "-1", "--frames", "3"], ["fps", "greater than 0"]),
        (["--width", "0", "--height", "36", "--fps", "30", "--frames", "3"], ["width", "greater than 0"]),
        (["--width", "64", "--height", "36", "--fps", "30", "--frames", "0"], ["frame_count", "greater than 0"]),
        (["--width", "64", "--height", "36", "--fps", "30"], ["frame_count", "duration_in_seconds"]),
        (["--width", "64", "--height", "36", "--fps", "30", "--frames", "3", "--concurrency", "0"], ["concurrency"]),
        (["--width", "64", "--height", "36", "--fps", "30", "--frames", "3", "--set", "mode=svg"], ["mode"]),
    ],
)
def test_render_composition_with_bad_flags_exits_2(project: Path, flags: list[str], names: list[str]) -> None:
    before = tree(project)
    result = run_cli("render", "site", *flags, cwd=project)
    assert_invalid(result, *names)
    assert tree(project) == before


@pytest.mark.parametrize(("source", "reason"), [("nope.html", "not found"), ("empty", "index.html")])
def test_render_missing_composition_path_exits_2(project: Path, source: str, reason: str) -> None:
    before = tree(project)
    result = run_cli("render", source, "--width", "64", "--height", "36", "--fps", "30", "--frames", "3", cwd=project)
    assert_invalid(result, "composition", str(project / source), reason)
    assert tree(project) == before


def test_render_duration_and_frames_flags_are_exclusive(project: Path) -> None:
    flags = ["--width", "64", "--height", "36", "--fps", "30", "--duration", "1", "--frames", "30"]
    result = run_cli("render", "site", *flags, cwd=project)
    assert result.returncode == 2
    assert "--frames" in result.stderr and "--duration" in result.stderr


# --- doctor ----------------------------------------------------------------------------------------


def test_doctor_lists_chromium_ffmpeg_and_libx264(tmp_path: Path) -> None:
    result = run_cli("doctor", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("chromium", "ffmpeg", "ffprobe", "libx264", "aac"):
        assert name in result.stdout, result.stdout
    for check in ("chromium", "ffmpeg", "encoder libx264"):
        row = next(line for line in result.stdout.splitlines() if check in line)
        assert " ok " in row and "missing" not in row, row
