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


def owner_tag() -> str:
    """``<pid>@<host>``: this process, as the names of the files and folders it owns carry it."""
    return f"{os.getpid()}@{socket.gethostname()}"


def gone_from_this_host(tag: str) -> bool:
    """Whether ``tag`` (``owner_tag``'s form) names a process of this host that is gone; False for another host's."""
    pid, _, host = tag.partition("@")
    return host == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid))


def process_folder(prefix: str) -> Path:
    """A new folder in the system's temporary folder, ``<prefix><pid>@<host>-<random>``, owned by this process;
    first this host's folders with ``prefix`` whose owner is gone are removed."""
    remove_orphaned_folders(prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{owner_tag()}-"))


def remove_orphaned_folders(prefix: str) -> None:
    """Remove this host's ``prefix`` folders (named by ``process_folder``) whose owning process is gone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*@*"):
        if gone_from_this_host(folder.name.removeprefix(prefix).rpartition("-")[0]):
            shutil.rmtree(folder, ignore_errors=True)
