"""The daemon's periodic workspace refresh starts new code servers only when what they serve changed.

Dagster's daemon drops its code servers every minute and starts new ones (~2 CPU-s a minute, and a render
running then shares its CPUs with the new server's imports). These tests drive a real daemon controller, its
real code servers and workspace, with the refresh patched as the project's daemon patches it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psutil
import pytest
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._daemon import controller
from dagster._daemon.daemon import IntervalDaemon

from helios_pipeline.dagster_defs import private_api
from helios_pipeline.dagster_defs.code_signature import code_location_signature

REPO = Path(__file__).resolve().parents[1]
SERVER_START_SECONDS = 60


@pytest.fixture
def patched_refresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The refresh patched with a signature the test sets (its one item); Dagster's own restored after."""
    monkeypatch.setattr(
        controller.DagsterDaemonController,
        "check_workspace_freshness",
        controller.DagsterDaemonController.check_workspace_freshness,
    )
    signature = ["first"]
    assert private_api.refresh_workspace_when_changed(lambda: signature[0], "helios_pipeline")
    yield signature


class IdleDaemon(IntervalDaemon):
    """A daemon thread that does nothing (the controller needs one): the tests drive its refresh by hand."""

    @classmethod
    def daemon_type(cls) -> str:
        return "HELIOS_TEST_IDLE"

    def run_iteration(self, workspace_process_context):  # type: ignore[override]
        yield from ()


def _controller(home: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("HELIOS_INBOX", str(home / "inbox"))
    monkeypatch.setenv("HELIOS_STORAGE", str(home / "storage"))
    instance = dg.DagsterInstance.get()
    target = WorkspaceFileTarget(paths=[str(workspace)])
    daemons = lambda _instance: [IdleDaemon(3600)]  # noqa: E731
    return instance, controller.daemon_controller_from_instance(instance, target, gen_daemons=daemons)


def _server_pids(daemon: controller.DagsterDaemonController) -> set[int]:
    """The processes of the code servers the daemon's locations talk to now."""
    registry = daemon._grpc_server_registry
    return {entry.process.server_process.pid for entry in registry._active_entries.values()}


def _refresh_due(daemon: controller.DagsterDaemonController) -> float:
    """The daemon's loop asking for a refresh whose interval has passed; the time it returns."""
    return daemon.check_workspace_freshness(time.time() - controller.RELOAD_WORKSPACE_INTERVAL - 1)


def _running_servers() -> set[int]:
    """Code servers this process started that are still running (zombies of earlier tests' children skipped)."""
    found = set()
    for process in psutil.Process().children(recursive=True):
        try:
            if "api grpc" in " ".join(process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE:
                found.add(process.pid)
        except psutil.Error:
            continue
    return found


def test_the_code_server_is_kept_until_the_code_changes_or_the_server_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patched_refresh: list[str]
) -> None:
    earlier = _running_servers()
    instance, daemon_context = _controller(tmp_path, REPO / "workspace.yaml", monkeypatch)
    with instance, daemon_context as daemon:
        first = _server_pids(daemon)
        assert len(first) == 1

        before = time.time()
        assert _refresh_due(daemon) >= before, "a skipped refresh still counts as done: the next is a minute on"
        assert _server_pids(daemon) == first, "the code did not change, yet a new code server was started"
        assert _running_servers() - earlier == first

        patched_refresh[0] = "edited"
        _refresh_due(daemon)
        second = _server_pids(daemon)
        assert second != first, "the code changed, and the daemon kept serving the old one"
        location = daemon._workspace_process_context.get_current_workspace().code_location_entries
        assert [entry.load_error for entry in location.values()] == [None]

        _refresh_due(daemon)
        assert _server_pids(daemon) == second, "nothing changed since the last refresh"

        (pid,) = second
        (killed,) = [entry.process for entry in daemon._grpc_server_registry._active_entries.values()]
        os.kill(pid, signal.SIGKILL)
        psutil.Process(pid).wait(timeout=10)
        Path(killed.socket).unlink(missing_ok=True)  # a killed server leaves its socket file: this test's damage
        _refresh_due(daemon)
        third = _server_pids(daemon)
        assert third not in (first, second), "the code server died, and the refresh did not start another"
        assert psutil.pid_exists(next(iter(third)))


def test_a_workspace_with_other_code_keeps_dagsters_refresh_every_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patched_refresh: list[str]
) -> None:
    """The signature covers this project's package only: another location's edits must still show within a minute."""
    (tmp_path / "other_defs.py").write_text("import dagster as dg\n\ndefs = dg.Definitions()\n")
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        textwrap.dedent(f"""\
            load_from:
              - python_file:
                  relative_path: other_defs.py
                  attribute: defs
                  working_directory: {tmp_path}
            """)
    )
    instance, daemon_context = _controller(tmp_path, workspace, monkeypatch)
    with instance, daemon_context as daemon:
        first = _server_pids(daemon)
        _refresh_due(daemon)
        assert _server_pids(daemon) != first, "another package's code server was kept: its code may have changed"


def test_the_signature_changes_with_the_package_and_the_inbox_specs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    monkeypatch.setenv("HELIOS_INBOX", str(inbox))
    empty = code_location_signature()
    assert any(path.endswith("dagster_defs/definitions.py") for path, _, _ in empty)
    assert any(path.endswith("js/timeline.js") for path, _, _ in empty)

    spec = inbox / "nightly.yaml"
    spec.write_text("name: nightly\n")
    with_spec = code_location_signature()
    assert with_spec != empty, "a new inbox spec (which may add a schedule) left the signature as it was"
    spec.write_text("name: nightly\nschedule: '0 6 * * *'\n")
    assert code_location_signature() != with_spec, "an edited inbox spec left the signature as it was"
    (inbox / "notes.txt").write_text("not a spec")
    assert code_location_signature() == code_location_signature()


def test_the_projects_daemon_applies_the_patch_before_it_loads_the_workspace(tmp_path: Path) -> None:
    probe = textwrap.dedent("""\
        from dagster._daemon import controller
        from helios_pipeline.dagster_defs import daemon, private_api

        def instead_of_the_daemon(argv):
            method = controller.DagsterDaemonController.check_workspace_freshness
            print("patched" if hasattr(method, "helios_original") else "dagster's own")

        private_api.run_daemon_cli = instead_of_the_daemon
        daemon.main(["run", "-w", "workspace.yaml"])
        """)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=SERVER_START_SECONDS
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "patched"
