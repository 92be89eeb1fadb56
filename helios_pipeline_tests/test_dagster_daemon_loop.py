"""The project's daemon entry point: Dagster's daemon with a short backfill loop."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
from dagster._daemon import backfill, controller

from helios_pipeline.dagster_defs.daemon import (
    DEFAULT_BACKFILL_LOOP_SECONDS,
    LOOP_SETTING,
    backfill_loop_seconds,
    daemon_command,
    shorten_backfill_loop,
)
from helios_pipeline.dagster_defs.settings import Settings


def test_loop_interval_defaults_and_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOOP_SETTING, raising=False)
    assert backfill_loop_seconds() == DEFAULT_BACKFILL_LOOP_SECONDS == 1.0
    monkeypatch.setenv(LOOP_SETTING, "2.5")
    assert backfill_loop_seconds() == 2.5


@pytest.mark.parametrize(("value", "reason"), [("fast", "a number of seconds"), ("0", "between"), ("900", "between")])
def test_a_bad_loop_interval_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str, reason: str) -> None:
    monkeypatch.setenv(LOOP_SETTING, value)
    with pytest.raises(ValueError, match=f"{LOOP_SETTING}.*{reason}.*{value}"):
        backfill_loop_seconds()


def test_the_daemon_refuses_to_start_with_a_bad_loop_interval() -> None:
    result = subprocess.run(
        daemon_command("run", "-w", "workspace.yaml"),
        env={"PATH": "/usr/bin:/bin", LOOP_SETTING: "soon"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert LOOP_SETTING in result.stderr and "'soon'" in result.stderr
    assert daemon_command()[0] == sys.executable


def test_the_shortened_interval_is_the_one_dagsters_backfill_loop_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards a Dagster upgrade: the backfill loop must still take its sleep from this constant."""
    monkeypatch.setattr(controller, "DEFAULT_DAEMON_INTERVAL_SECONDS", controller.DEFAULT_DAEMON_INTERVAL_SECONDS)
    assert shorten_backfill_loop(1.5)
    assert controller.DEFAULT_DAEMON_INTERVAL_SECONDS == 1.5
    source = inspect.getsource(backfill.execute_backfill_iteration_loop)
    assert "from dagster._daemon.controller import DEFAULT_DAEMON_INTERVAL_SECONDS" in source
    assert "DEFAULT_DAEMON_INTERVAL_SECONDS - loop_duration" in source


@pytest.mark.parametrize(
    ("value", "reason"), [("four", "a whole number"), ("2.5", "a whole number"), ("0", "between 1 and 999")]
)
def test_a_bad_chunk_dimension_size_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str, reason: str) -> None:
    monkeypatch.setenv("HELIOS_MAX_CHUNKS", value)
    with pytest.raises(ValueError, match=f"HELIOS_MAX_CHUNKS must be {reason}.*{value}"):
        Settings.from_env()
