"""The engine's own Chromium: launched with its DevTools pipe (no driver process), its folder removed however it
ends, its calls failing at once when it dies, and a browser that cannot start named with its own words."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from helios_pipeline.engine.browser import browser_process, launch_browser
from helios_pipeline.engine.cdp import BrowserClosed
from helios_pipeline.engine.errors import RenderError
from helios_pipeline.engine.tools import chromium_path
from helios_pipeline.processes import alive, process_tree
from helios_pipeline.scratch import BROWSER_TEMP_PREFIX
from helios_pipeline_tests.helpers import describe

pytestmark = pytest.mark.slow


def _folder_of(browser_pid: int) -> Path:
    (arg,) = [a for a in psutil.Process(browser_pid).cmdline() if a.startswith("--user-data-dir=")]
    return Path(arg.removeprefix("--user-data-dir=")).parent


def test_a_browser_runs_as_this_processs_child_with_no_driver_and_its_folder_goes_with_it() -> None:
    """Chromium is this process's child (no Node driver between), its profile and temporary files in a folder of
    its own under the system's temporary folder, gone when the block ends; this process's TMPDIR is untouched."""
    own_tmpdir = os.environ.get("TMPDIR")
    with launch_browser() as browser:
        chromium = browser_process(browser)
        assert chromium is not None and chromium.pid in {p.pid for p in psutil.Process().children(recursive=True)}
        tree = process_tree(os.getpid())[1:]  # a wrapper script (Debian's /usr/bin one) may run Chromium
        assert not [p for p in tree if "node" in p.name().lower()], describe(tree)
        folder = _folder_of(chromium.pid)
        assert folder.name.startswith(BROWSER_TEMP_PREFIX) and folder.parent == Path(tempfile.gettempdir())
        assert chromium.environ()["TMPDIR"] == str(folder)
        assert os.environ.get("TMPDIR") == own_tmpdir
        assert browser.version.split(".")[0].isdigit(), browser.version
        page = browser.open_page(320, 200)
        size = page.send("Runtime.evaluate", {"expression": "[innerWidth, innerHeight]", "returnByValue": True})
        assert size["result"]["value"] == [320, 200]
    assert not alive(tree), describe(alive(tree))
    assert not folder.exists(), f"left behind: {sorted(folder.rglob('*'))}"


def test_a_killed_browser_fails_the_waiting_call_at_once_and_leaves_no_folder() -> None:
    """The watchdog or a cancel kills the browser while a call waits on it: the call fails at once (the pipe
    ended), not after a time-out, and the block still removes the browser's folder."""
    with launch_browser() as browser:
        folder = _folder_of(browser.pid)
        tree = process_tree(browser.pid)
        page = browser.open_page(64, 64)
        killer = threading.Timer(1.0, lambda: browser_process(browser).kill())
        killer.start()
        started = time.monotonic()
        with pytest.raises(BrowserClosed, match=r"Runtime\.evaluate: the browser closed its DevTools pipe"):
            # the time-out only keeps a broken build from hanging the suite: the pipe's end must fail it first
            page.send("Runtime.evaluate", {"expression": "new Promise(() => {})", "awaitPromise": True}, timeout=20)
        assert time.monotonic() - started < 5
        with pytest.raises(BrowserClosed):
            page.send("Runtime.evaluate", {"expression": "1"})
    assert not alive(tree), describe(alive(tree))
    assert not folder.exists(), f"left behind: {sorted(folder.rglob('*'))}"


def test_a_browser_that_cannot_start_is_named_with_what_it_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\necho 'cannot open display: no such thing' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("HELIOS_CHROMIUM", str(fake))
    chromium_path.cache_clear()
    before = set(Path(tempfile.gettempdir()).glob(f"{BROWSER_TEMP_PREFIX}*"))
    try:
        with (
            pytest.raises(RenderError, match=rf"Chromium \({fake}\) did not start: cannot open display: no such thing"),
            launch_browser(),
        ):
            pass
    finally:
        monkeypatch.undo()
        chromium_path.cache_clear()  # the next test finds the real one
    assert set(Path(tempfile.gettempdir()).glob(f"{BROWSER_TEMP_PREFIX}*")) <= before, "its folder was left"


def test_a_killed_processs_browser_folder_is_removed_by_the_next_launch_on_the_host() -> None:
    """A process killed outright (an out-of-memory kill) never removes its browser's folder: the next browser
    launched on the machine does. Folders of live processes and of other hosts (a shared /tmp) are left alone."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    root, host = Path(tempfile.gettempdir()), socket.gethostname()
    folders = {
        "dead here": root / f"{BROWSER_TEMP_PREFIX}{gone.pid}@{host}-abcd1234",
        "alive here": root / f"{BROWSER_TEMP_PREFIX}{os.getpid()}@{host}-abcd1234",
        "dead elsewhere": root / f"{BROWSER_TEMP_PREFIX}{gone.pid}@another-host-abcd1234",
    }
    for folder in folders.values():
        (folder / "profile").mkdir(parents=True)
    try:
        with launch_browser():
            pass
        assert {name: folder.exists() for name, folder in folders.items()} == {
            "dead here": False,
            "alive here": True,
            "dead elsewhere": True,
        }
    finally:
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)


def test_a_browser_ends_when_the_process_that_launched_it_is_killed_outright(tmp_path: Path) -> None:
    """Chromium runs in a session of its own (a terminal's Ctrl-C is the chunk's to handle, not the browser's);
    the process that launched it killed with SIGKILL, it must not run on."""
    script = (
        "import sys, time\n"
        "from helios_pipeline.engine.browser import launch_browser\n"
        "with launch_browser() as browser:\n"
        "    print(browser.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(owner.stdout.readline())
        tree = process_tree(pid)
        assert tree and os.getsid(pid) != os.getsid(owner.pid)
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 10
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(tree), describe(alive(tree))
    finally:
        owner.kill()
        owner.wait()
