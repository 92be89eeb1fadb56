"""Atomic outputs: a file appears under its final name only once it is complete."""

from __future__ import annotations

import contextlib
import glob
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil

PARTIAL_MARK = ".partial-"


def partial_path(final: Path, suffix: str | None = None) -> Path:
    """The temporary name a file is written under: same folder, same extension for FFmpeg (or ``suffix``, for a
    companion file such as a filter script), and the writer's pid and host, so that what a process killed outright
    left can be told from what a live one writes (``remove_orphaned_partials``)."""
    owner = f"{os.getpid()}@{socket.gethostname()}"
    return final.with_name(f".{final.stem}{PARTIAL_MARK}{owner}{final.suffix if suffix is None else suffix}")


def remove_orphaned_partials(folder: Path, final: Path | None = None) -> list[Path]:
    """Remove the temporary files in ``folder`` (of ``final`` only, if given) whose writer was a process on this
    host that is gone: killed outright, it could not remove them. Returns what was removed."""
    host = socket.gethostname()
    stem = glob.escape(final.stem) if final is not None else "*"
    removed = []
    for path in folder.glob(f".{stem}{PARTIAL_MARK}*@*"):
        owner, _, rest = path.name.rpartition(PARTIAL_MARK)[2].partition("@")
        suffix = rest.removeprefix(host)
        written_here = suffix != rest and suffix.startswith(".") and "." not in suffix[1:]
        if written_here and owner.isdigit() and not psutil.pid_exists(int(owner)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path; rename it to ``final`` on success, delete it on any failure. What a killed writer of
    ``final`` left is removed first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_partials(final.parent, final)
    temp = partial_path(final)
    try:
        yield temp
        os.replace(temp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
