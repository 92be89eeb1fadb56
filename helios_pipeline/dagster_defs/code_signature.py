"""What the project's code location is built from, as a signature cheap enough to take every minute.

Dagster's daemon refreshes its workspace every minute, starting a new code server for it each time, so that
edited code shows. That costs ~2 CPU-seconds a minute, and a render running then shares its CPUs with the new
server's imports and waits for it to load. The project's daemon refreshes only when this signature changed
(``private_api.refresh_workspace_when_changed``).
"""

from __future__ import annotations

import os
from pathlib import Path

import helios_pipeline
from helios_pipeline.dagster_defs.inbox import inbox_specs
from helios_pipeline.dagster_defs.settings import inbox_folder

PACKAGE = Path(helios_pipeline.__file__).resolve().parent
SKIPPED_FOLDERS = frozenset({"__pycache__"})

FileStamp = tuple[str, int, int]


def code_location_signature() -> tuple[FileStamp, ...]:
    """(path, modification time, size) of every file of the ``helios_pipeline`` package (the code, its page
    scripts) and of every inbox spec (a spec's ``schedule:`` makes one of the location's schedules, read when
    it loads): an edit, a new file or a removed one changes it."""
    files = [*_package_files(PACKAGE), *_inbox_files()]
    return tuple(stamp for path in files if (stamp := _stamp(path)) is not None)


def _package_files(root: Path) -> list[Path]:
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if name not in SKIPPED_FOLDERS)
        found.extend(Path(folder, name) for name in sorted(names) if not name.endswith(".pyc"))
    return found


def _inbox_files() -> list[Path]:
    inbox = inbox_folder()
    return inbox_specs(inbox) if inbox.is_dir() else []


def _stamp(path: Path) -> FileStamp | None:
    try:
        stat = path.stat()
    except OSError:  # removed while listed: the next signature no longer lists it
        return None
    return str(path), stat.st_mtime_ns, stat.st_size
