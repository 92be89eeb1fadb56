"""The CLI against a deployment it cannot use: a clear line and exit 2, in seconds, nothing registered."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.helpers import (
    deployment_processes,
    describe,
    open_instance,
    write_instance_config,
    write_spec,
)
from helios_pipeline_tests.services import S3Server, free_port

REPO = Path(__file__).resolve().parents[1]


def cli(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "helios_pipeline.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result, time.monotonic() - started


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "HELIOS_", "AWS_"))}
    env.update(DAGSTER_HOME=str(tmp_path / "home"), HELIOS_CACHE=str(tmp_path / "cache"))
    return env


def test_submit_to_a_missing_bucket_exits_2_naming_it(tmp_path: Path, s3_server: S3Server) -> None:
    spec = write_spec(tmp_path, "nobucket", COMPOSITIONS / "frame_raf", frame_count=4)
    env = {**clean_env(tmp_path), **s3_server.env(), "HELIOS_STORAGE": "s3://no-such-renders-bucket/helios"}

    result, seconds = cli(["submit", str(spec)], env)

    assert result.returncode == 2, result.stderr
    assert "HeadBucket s3://no-such-renders-bucket" in result.stderr and "Traceback" not in result.stderr
    assert seconds < 30


def test_submit_to_an_instance_whose_postgres_is_down_exits_2_naming_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "celery" / "dagster.yaml", home / "dagster.yaml")
    port = free_port()  # nothing listens there
    env = {
        **clean_env(tmp_path),
        "HELIOS_STORAGE": str(tmp_path / "storage"),
        "HELIOS_PG_HOST": "127.0.0.1",
        "HELIOS_PG_PORT": str(port),
        "HELIOS_PG_USER": "dagster",
        "HELIOS_PG_PASSWORD": "",
        "HELIOS_PG_DB": "dagster",
        "HELIOS_CELERY_BROKER": f"redis://127.0.0.1:{free_port()}/0",
        "HELIOS_CELERY_BACKEND": f"redis://127.0.0.1:{free_port()}/1",
    }
    spec = write_spec(tmp_path / "specs", "nopg", COMPOSITIONS / "frame_raf", frame_count=4)

    for command in (["submit", str(spec)], ["render", str(spec)]):
        result, seconds = cli(command, env)
        assert result.returncode == 2, result.stderr
        assert f"127.0.0.1:{port}" in result.stderr and "TCP connect failed" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert seconds < 30, f"{command[0]} took {seconds:.0f} s to report a dead Postgres"
    assert not (tmp_path / "storage").exists(), "nothing is registered"


@pytest.mark.parametrize(
    ("setting", "value", "existing_instance"),
    [("HELIOS_TRIGGER_SECONDS", "0", False), ("HELIOS_MAX_CHUNKS", "many", True), ("HELIOS_STALL_SECONDS", "0", True)],
)
def test_a_bad_numeric_setting_exits_2_naming_it_and_leaves_nothing_running(
    tmp_path: Path, setting: str, value: str, existing_instance: bool
) -> None:
    """On a new DAGSTER_HOME, and on one whose databases exist, where the CLI starts its daemon before its imports."""
    spec = write_spec(tmp_path, "badsetting", COMPOSITIONS / "frame_raf", frame_count=4)
    env = {**clean_env(tmp_path), setting: value}
    if existing_instance:
        write_instance_config(tmp_path / "home")
        open_instance(tmp_path / "home").dispose()

    result, _ = cli(["render", str(spec)], env, timeout=120)

    assert result.returncode == 2, result.stderr
    assert f"invalid setting: {setting} must be" in result.stderr and f"'{value}'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (spec.parent / "out").exists()
    assert not deployment_processes(tmp_path / "home"), describe(deployment_processes(tmp_path / "home"))


def test_ui_on_a_port_in_use_exits_2_naming_it_before_starting_anything(tmp_path: Path) -> None:
    """It printed "open http://…" and started its daemon, then the webserver failed in its log and the UI exited 1."""
    import socket

    env = clean_env(tmp_path)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result, seconds = cli(["ui", "--port", str(port)], env)

    assert result.returncode == 2, result.stderr
    assert f"cannot serve the UI on 127.0.0.1:{port}: Address already in use" in result.stderr, result.stderr
    assert "open http" not in result.stderr + result.stdout and "Traceback" not in result.stderr
    assert seconds < 30
    assert not (tmp_path / "home").exists(), "the instance was set up (its databases made) for a UI that cannot run"
    assert not deployment_processes(tmp_path / "home"), describe(deployment_processes(tmp_path / "home"))

    result, _ = cli(["ui", "--host", "no-such-host.invalid", "--port", str(free_port())], env)
    assert result.returncode == 2 and "no-such-host.invalid" in result.stderr and "--host" in result.stderr
