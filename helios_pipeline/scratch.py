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

BROWSER_TEMP_PREFIX = "helios-chromium-"
"""A Chromium's own folder (``engine.browser.launch_browser``): its profile and its temporary files (its ``TMPDIR``),
removed when it closes (or, the process that launched it killed outright, by the next launch on the host)."""
UI_TEMP_PREFIX = "helios-ui-"
"""The temporary folder of `helios-pipeline ui`'s webserver and daemon (their ``TMPDIR``), removed when they stop."""
PREVIEW_TEMP_PREFIX = "helios-preview-"
"""The JPEGs of a preview ladder (``engine.thumbnail.ladder_outputs``), written by the FFmpeg run that makes a contact
sheet or a picture's preview (a chunk's go beside the chunk)."""
PREFIXES = (BROWSER_TEMP_PREFIX, UI_TEMP_PREFIX, PREVIEW_TEMP_PREFIX)
CODE_SERVER_PREFIX = "helios-code-server-"
"""The CLI's own daemon's early code server's socket folder (``early_code_server``)."""
FORK_SERVER_PREFIX = "helios-forks-"
"""The warm launcher's fork-server socket folder (``warm_launcher``): Python's own, ``pymp-*``, named no owner, so a
daemon killed outright left it behind for good."""
SOCKET_PREFIXES = (CODE_SERVER_PREFIX, FORK_SERVER_PREFIX)


def owner_tag() -> str:
    """``<pid>@<host>``: this process, as the names of the files and folders it owns carry it."""
    return f"{os.getpid()}@{socket.gethostname()}"


def gone_from_this_host(tag: str) -> bool:
    """Whether ``tag`` (``owner_tag``'s form) names a process of this host that is gone (a zombie is: it only waits
    to be reaped, which an orphan's new parent may take its time to do); False for another host's."""
    pid, _, host = tag.partition("@")
    return host == socket.gethostname() and pid.isdigit() and process_gone(int(pid))


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` of this host is gone; a zombie is (it only waits to be reaped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


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


def socket_folder(prefix: str) -> Path:
    """A new folder ``<prefix><pid>-<random>`` in the system's temporary folder, owned by this process, for sockets:
    its name holds no host (``process_folder``'s does), as a socket's path must stay under 108 bytes, so it suits a
    temporary folder of this host only (a container's ``/tmp``, not one shared between hosts). First this prefix's
    folders whose owner is gone are removed."""
    remove_orphaned_socket_folders(prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


def remove_orphaned_socket_folders(prefix: str) -> None:
    """Remove the ``prefix`` folders (named by ``socket_folder``) whose owning process is gone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*-*"):
        pid = folder.name.removeprefix(prefix).partition("-")[0]
        if pid.isdigit() and process_gone(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def remove_all_orphaned_folders() -> None:
    """Sweep every kind of folder here, after a stop that had to kill processes (their folders are orphans now)."""
    for prefix in PREFIXES:
        remove_orphaned_folders(prefix)
    for prefix in SOCKET_PREFIXES:
        remove_orphaned_socket_folders(prefix)
