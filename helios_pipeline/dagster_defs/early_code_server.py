"""The CLI's own daemon's code server, started before the daemon imports Dagster so that the two starts overlap.

A daemon that loads ``workspace.yaml`` starts its code server only once it has imported Dagster's daemon
(~4 s on the 2-core machine), and that server then takes ~2 s more to import Dagster and the code location:
a render on a machine where no deployment runs waited for both, one after the other. Here the daemon's
entry point starts the same server first thing (``dagster api grpc`` with the workspace entry's module,
attribute and working directory: the command Dagster's own deployments run, through ``code_server``) and,
once it answers, hands the daemon a workspace that names it (a ``grpc_server`` entry with the same location
name, as ``dagster dev`` does). The runs, their code origins and the UI's view of them are the same as with the
managed server.

Only for the CLI's short-lived daemon: a long-lived one (``helios-pipeline ui``) keeps Dagster's managed
server, which it replaces when the code on disk changed (``code_signature``) so that edits are picked up.
Anything unexpected (a workspace with other entries, a server that exits or does not answer) falls back to
the workspace as given.

This module imports no Dagster at load time: it runs before Dagster is imported.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from helios_pipeline.scratch import CODE_SERVER_PREFIX, socket_folder

FLAG = "--early-code-server"
"""Given to the daemon's entry point (before Dagster's own arguments) by the CLI's own daemon."""
STARTUP_SECONDS = 180
"""As long as Dagster waits for a code server it starts (``code_server_process_startup_timeout``)."""
POLL_SECONDS = 0.05
FOLDER_PREFIX = CODE_SERVER_PREFIX
"""The server's socket lives in ``<tmp>/helios-code-server-<daemon pid>-<random>/`` (a socket path must stay
under 108 bytes, so not in DAGSTER_HOME); a killed daemon's folder is removed by the next one."""
SERVER_MODULE = "helios_pipeline.dagster_defs.code_server"
"""``dagster api grpc`` with Dagster and the code location imported out of the garbage collector's sight."""
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("helios_pipeline")


@dataclass(frozen=True)
class ModuleEntry:
    """The workspace's one ``python_module`` entry: what the server loads."""

    module_name: str
    attribute: str | None
    working_directory: str | None
    location_name: str | None

    def server_args(self) -> list[str]:
        return [
            "--module-name", self.module_name,
            *(["--attribute", self.attribute] if self.attribute else []),
            *(["--working-directory", self.working_directory] if self.working_directory else []),
        ]  # fmt: skip


def module_entry(workspace: Path) -> ModuleEntry | None:
    """The workspace's single ``python_module`` entry, or None for any other workspace (left to Dagster)."""
    try:
        entries = (yaml.safe_load(workspace.read_text(encoding="utf-8")) or {}).get("load_from") or []
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if len(entries) != 1 or not isinstance(entries[0], dict) or set(entries[0]) != {"python_module"}:
        return None
    entry = entries[0]["python_module"]
    if isinstance(entry, str):
        return ModuleEntry(entry, None, None, None)
    allowed = {"module_name", "attribute", "working_directory", "location_name"}
    if not isinstance(entry, dict) or not set(entry) <= allowed or not isinstance(entry.get("module_name"), str):
        return None
    return ModuleEntry(
        entry["module_name"], entry.get("attribute"), entry.get("working_directory"), entry.get("location_name")
    )


def _die_with_parent() -> None:
    """In the server's process before exec: SIGTERM when the daemon dies, even by SIGKILL (no orphan)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EarlyCodeServer:
    """A code server started ahead of the daemon; ``daemon_args`` swaps it into the daemon's arguments."""

    def __init__(self, workspace: Path, entry: ModuleEntry) -> None:
        self.workspace = workspace
        self.entry = entry
        self.folder = socket_folder(FOLDER_PREFIX)
        self.socket = self.folder / "grpc.sock"
        self.process = subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE, "api", "grpc", "--socket", str(self.socket),
             "--log-level", "warning", *entry.server_args()],
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )  # fmt: skip

    @classmethod
    def start(cls, daemon_argv: list[str]) -> EarlyCodeServer | None:
        """Start the server of the workspace the daemon's arguments name (``-w PATH``), if it is one we know."""
        workspace = _workspace_arg(daemon_argv)
        entry = module_entry(workspace) if workspace is not None else None
        return cls(workspace, entry) if workspace is not None and entry is not None else None

    def daemon_args(self, daemon_argv: list[str]) -> list[str]:
        """The daemon's arguments with a workspace that names this server, once it answers; the arguments as
        given (and this server stopped) if it does not."""
        from helios_pipeline.dagster_defs import private_api

        names = private_api.workspace_location_names(self.workspace)
        if len(names) != 1 or (self.entry.location_name and names[0] != self.entry.location_name):
            return self._fall_back(daemon_argv, f"unexpected code locations {names}")
        deadline = time.monotonic() + STARTUP_SECONDS
        while not private_api.code_server_answers(self.socket):
            if self.process.poll() is not None:
                return self._fall_back(daemon_argv, f"it exited with code {self.process.returncode}")
            if time.monotonic() > deadline:
                return self._fall_back(daemon_argv, f"it did not answer within {STARTUP_SECONDS} s")
            time.sleep(POLL_SECONDS)
        workspace = self.folder / "workspace.yaml"
        entry = {"grpc_server": {"socket": str(self.socket), "location_name": names[0]}}
        workspace.write_text(yaml.safe_dump({"load_from": [entry]}), encoding="utf-8")
        return _with_workspace(daemon_argv, workspace)

    def stop(self) -> None:
        """End the server (the daemon has stopped) and remove its socket folder. SIGKILL: a code server keeps no
        state, and its graceful gRPC shutdown took ~0.6 s that the CLI waited for at the end of every render."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _fall_back(self, daemon_argv: list[str], why: str) -> list[str]:
        log.warning("the daemon's early code server is not used (%s): the daemon starts its own", why)
        self.stop()
        return daemon_argv


def _workspace_arg(argv: list[str]) -> Path | None:
    flags = [i for i, arg in enumerate(argv) if arg in ("-w", "--workspace")]
    if len(flags) != 1 or flags[0] + 1 >= len(argv):
        return None
    return Path(argv[flags[0] + 1])


def _with_workspace(argv: list[str], workspace: Path) -> list[str]:
    index = next(i for i, arg in enumerate(argv) if arg in ("-w", "--workspace"))
    return [*argv[: index + 1], str(workspace), *argv[index + 2 :]]
