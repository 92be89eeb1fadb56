"""A full disk, told the same way wherever it strikes: ``no space left on device writing <path>``.

FFmpeg's outputs, published chunk files and the storage's own records all fail with ENOSPC (or
EDQUOT, a quota) when their volume fills up. What the user needs is that, and which path; a retry
on the same machine cannot help until space is freed, so these errors are not retried.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(Exception):
    """Marks an error caused by a full volume or an exhausted quota (mixed into RenderError and StorageError)."""


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


def no_space_message(path: str | Path, code: int = errno.ENOSPC) -> str:
    """``no space left on device writing <path>`` (``disk quota exceeded writing <path>`` for EDQUOT)."""
    return f"{os.strerror(code).lower()} writing {path}"


def no_space_reported(text: str) -> int | None:
    """The errno of a full disk that a tool (FFmpeg) reported in ``text`` (its stderr), if it did."""
    for code in NO_SPACE_ERRNOS:
        if os.strerror(code) in text:
            return code
    return None
