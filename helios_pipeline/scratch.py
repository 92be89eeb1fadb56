"""Temporary folders that belong to one process, and are cleaned up even when it is killed outright.

A process that gives its children a temporary folder of their own (``TMPDIR``) removes it when they stop. One
killed outright (SIGKILL, the out-of-memory killer) cannot: the next process on the same host that makes a folder
with the same prefix removes those whose owner is gone. The owner's pid and host are in the name, so a temporary
folder shared between hosts (or containers) never loses a folder whose owner lives elsewhere.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import psutil


def process_folder(prefix: str) -> Path:
    """A new folder in the system's temporary folder, ``<prefix><pid>@<host>-<random>``, owned by this process;
    first this host's folders with ``prefix`` whose owner is gone are removed."""
    remove_orphaned_folders(prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}@{socket.gethostname()}-"))


def remove_orphaned_folders(prefix: str) -> None:
    """Remove this host's ``prefix`` folders (named by ``process_folder``) whose owning process is gone."""
    host = socket.gethostname()
    for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*@*"):
        owner, _, rest = folder.name.removeprefix(prefix).partition("@")
        if rest.rpartition("-")[0] == host and owner.isdigit() and not psutil.pid_exists(int(owner)):
            shutil.rmtree(folder, ignore_errors=True)
