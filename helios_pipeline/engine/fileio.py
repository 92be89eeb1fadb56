"""Atomic outputs: a file appears under its final name only once it is complete."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def partial_path(final: Path) -> Path:
    """The temporary name a file is written under (same folder, same extension for FFmpeg)."""
    return final.with_name(f".{final.stem}.partial-{os.getpid()}{final.suffix}")


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path; rename it to ``final`` on success, delete it on any failure."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = partial_path(final)
    try:
        yield temp
        os.replace(temp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
