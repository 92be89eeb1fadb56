"""Atomic outputs: a file appears under its final name only once it is complete."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from helios_pipeline.engine.errors import RenderError
from helios_pipeline.scratch import gone_from_this_host, owner_tag

PARTIAL_MARK = ".partial-"


def partial_path(final: Path, suffix: str | None = None) -> Path:
    """The temporary name a file is written under: same folder, same extension for FFmpeg (or ``suffix``, for a
    companion file such as a filter script), and the writer's pid and host, so that what a process killed outright
    left can be told from what a live one writes (``remove_orphaned_partials``)."""
    return final.with_name(f".{final.stem}{PARTIAL_MARK}{owner_tag()}{final.suffix if suffix is None else suffix}")


def remove_orphaned_partials(folder: Path, final: Path | None = None) -> list[Path]:
    """Remove the temporary files in ``folder`` (of ``final`` only, if given), and their companion folders (a chunk's
    preview JPEGs), whose writer was a process on this host that is gone: killed outright, it could not remove them.
    Returns what was removed."""
    stem = glob.escape(final.stem) if final is not None else "*"
    removed = []
    for path in folder.glob(f".{stem}{PARTIAL_MARK}*@*.*"):
        tag = path.name.rpartition(PARTIAL_MARK)[2].rpartition(".")[0]  # the extension has no dot; a host may
        if gone_from_this_host(tag):
            with contextlib.suppress(FileNotFoundError):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
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


@contextlib.contextmanager
def claimed_folder(folder: Path, output: object) -> Iterator[bool]:
    """Make ``folder`` if it is missing and hold it for this render of ``output``, exclusively (an advisory lock
    on the folder itself); yields whether this call made it. Two renders of one output at once (an overlapping
    scheduled job, a double submit) would write the same chunk files and remove each other's: the second fails at
    once, naming the output, instead of failing later or breaking the first. The lock ends with the process, so
    a render killed outright holds nothing."""
    while True:
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue  # removed as the render holding it ended: make it afresh
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(folder).st_ino == os.fstat(handle).st_ino:
                    break
        except BlockingIOError:
            os.close(handle)
            raise RenderError(
                f"{output} is being rendered by another process right now (its work folder {folder} is held): "
                "wait for that render to end, or render to another output"
            ) from None
        os.close(handle)  # the folder we locked was removed (and maybe made again) meanwhile: try again
    try:
        yield created
    finally:
        os.close(handle)
