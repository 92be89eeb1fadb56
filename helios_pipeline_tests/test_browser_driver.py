"""Playwright's node driver starts with the engine's V8 memory options, without disturbing this process's
environment or options the user gave node."""

from __future__ import annotations

import os

import psutil
import pytest

from helios_pipeline.engine.browser import DRIVER_NODE_OPTIONS, start_playwright


def _driver_node_options() -> str | None:
    drivers = [p for p in psutil.Process().children(recursive=True) if "node" in p.name().lower()]
    assert len(drivers) == 1, drivers
    return drivers[0].environ().get("NODE_OPTIONS")


def test_the_driver_gets_the_memory_options_and_keeps_the_users(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_OPTIONS", "--stack-trace-limit=7")
    with start_playwright():
        options = (_driver_node_options() or "").split()
        assert options == ["--stack-trace-limit=7", *DRIVER_NODE_OPTIONS]
        assert os.environ["NODE_OPTIONS"] == "--stack-trace-limit=7"  # only the driver's copy carries them
    monkeypatch.delenv("NODE_OPTIONS")
    with start_playwright():
        assert (_driver_node_options() or "").split() == list(DRIVER_NODE_OPTIONS)
        assert "NODE_OPTIONS" not in os.environ
