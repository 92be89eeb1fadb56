"""Playwright's node driver starts with the engine's V8 memory options, without disturbing this process's
environment or options the user gave node."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from helios_pipeline.engine.browser import (
    DRIVER_NODE_OPTIONS,
    DRIVER_TEMP_PREFIX,
    browser_process,
    launch_browser,
    start_playwright,
)
from helios_pipeline.processes import alive, process_tree
from helios_pipeline_tests.helpers import describe


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


def test_the_drivers_temporary_folder_goes_with_it_even_when_its_browser_was_killed() -> None:
    """The driver makes each browser's profile and artifacts folders in its TMPDIR and removes them when the
    browser closes; a killed browser left them behind. The driver's TMPDIR is a folder of its own, removed when
    it stops, while this process's temporary folder stays what it was."""
    own_tmpdir = os.environ.get("TMPDIR")
    with start_playwright() as playwright, launch_browser(playwright) as browser:
        (driver,) = [p for p in psutil.Process().children(recursive=True) if "node" in p.name().lower()]
        scratch = Path(driver.environ()["TMPDIR"])
        assert scratch.name.startswith(DRIVER_TEMP_PREFIX) and scratch.parent == Path(tempfile.gettempdir())
        assert os.environ.get("TMPDIR") == own_tmpdir
        assert sorted(path.name.rpartition("-")[0] for path in scratch.iterdir()) == [
            "playwright-artifacts",
            "playwright_chromiumdev_profile",
        ], "the browser's folders are not in the driver's own temporary folder"
        browser_process(browser).kill()  # a chunk's watchdog or cancel does this
    assert not scratch.exists(), f"left behind: {sorted(scratch.rglob('*'))}"


def test_a_browser_whose_driver_died_has_ended_when_its_block_ends_and_leaves_no_folder() -> None:
    """A SIGTERM to a run worker's group ends Playwright's driver at once: the browser, in a session of its own,
    loses its pipe and ends by itself, writing its profile as it does. Playwright's close then fails at once; the
    block must still wait for the browser to end, or the driver's folder removed next gets written to again."""
    with start_playwright() as playwright:
        with launch_browser(playwright) as browser:
            chromium = browser_process(browser)
            assert chromium is not None
            tree = process_tree(chromium.pid)
            (driver,) = [p for p in psutil.Process().children(recursive=True) if "node" in p.name().lower()]
            scratch = Path(driver.environ()["TMPDIR"])
            driver.kill()
            driver.wait(5)
        assert not alive(tree), describe(alive(tree))
    assert not scratch.exists(), f"left behind: {sorted(scratch.rglob('*'))}"


def test_a_killed_processs_driver_folder_is_removed_by_the_next_driver_on_the_host() -> None:
    """A process killed outright (an out-of-memory kill) never stops its driver: the next driver started on the
    machine removes that folder. Folders of live processes and of other hosts (a shared /tmp) are left alone."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    root, host = Path(tempfile.gettempdir()), socket.gethostname()
    folders = {
        "dead here": root / f"{DRIVER_TEMP_PREFIX}{gone.pid}@{host}-abcd1234",
        "alive here": root / f"{DRIVER_TEMP_PREFIX}{os.getpid()}@{host}-abcd1234",
        "dead elsewhere": root / f"{DRIVER_TEMP_PREFIX}{gone.pid}@another-host-abcd1234",
    }
    for folder in folders.values():
        (folder / "playwright_chromiumdev_profile-x1").mkdir(parents=True)
    try:
        with start_playwright():
            pass
        assert {name: folder.exists() for name, folder in folders.items()} == {
            "dead here": False,
            "alive here": True,
            "dead elsewhere": True,
        }
    finally:
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
