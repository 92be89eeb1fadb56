"""The project's daemon entry point: Dagster's daemon with a short backfill loop."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from dagster._daemon import controller

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


def test_the_shortened_interval_paces_dagsters_backfill_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards a Dagster upgrade: Dagster's own backfill loop, run for 3.5 s, must go round every second."""
    import logging
    import threading

    import dagster as dg
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.backfill import execute_backfill_iteration_loop
    from dagster._daemon.daemon import SpanMarker

    monkeypatch.setattr(controller, "DEFAULT_DAEMON_INTERVAL_SECONDS", controller.DEFAULT_DAEMON_INTERVAL_SECONDS)
    assert shorten_backfill_loop(1.0)
    target = ModuleTarget(
        module_name="helios_pipeline.dagster_defs.definitions", attribute="defs", working_directory=None,
        location_name="helios",
    )  # fmt: skip
    with (
        dg.instance_for_test() as instance,
        create_test_daemon_workspace_context(target, instance) as context,
    ):
        started = time.monotonic()
        loop = execute_backfill_iteration_loop(
            context, logging.getLogger("test"), threading.Event(), until=time.time() + 3.5
        )
        rounds = sum(1 for marker in loop if marker is SpanMarker.START_SPAN)
    assert rounds >= 3, f"{rounds} backfill loop rounds in {time.monotonic() - started:.1f} s: the interval is not 1 s"


@pytest.mark.parametrize(
    ("value", "reason"), [("four", "a whole number"), ("2.5", "a whole number"), ("0", "between 1 and 999")]
)
def test_a_bad_chunk_dimension_size_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str, reason: str) -> None:
    monkeypatch.setenv("HELIOS_MAX_CHUNKS", value)
    with pytest.raises(ValueError, match=f"HELIOS_MAX_CHUNKS must be {reason}.*{value}"):
        Settings.from_env()
