"""Child processes as whole trees: start one in its own session, stop it with everything it started.

Chunk workers, the Dagster webserver and daemon all start helpers (Chromium, FFmpeg, code servers,
run workers). Stopping only the direct child leaves those behind, so every stop here works on the
process group *and* on a snapshot of the process tree (Chromium starts a session of its own, out
of the group). One place holds these semantics; callers never send signals themselves.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

POLL_SECONDS = 0.05
"""How often a stop looks whether its processes are gone: a render's end waits on its daemon's stop."""
CHUNK_ENV = "HELIOS_CHUNK_OUTPUT"
"""Set to the chunk's output file in every process a chunk starts (its worker, Chromium, FFmpeg): finds strays."""


def start_group(
    command: Sequence[str], *, term_with_parent: bool = False, fds: Mapping[int, int] | None = None, **popen_args: Any
) -> subprocess.Popen:
    """``subprocess.Popen`` in a new session (so a new process group, whose id is the child's pid).

    With ``term_with_parent`` the child gets SIGTERM when this process ends, even killed outright (Linux's
    parent-death signal): in a session of its own it would otherwise run on, orphaned. ``fds`` maps the child's
    file descriptor numbers to this process's (Chromium's DevTools pipe is its fds 3 and 4)."""
    if term_with_parent or fds:
        popen_args["preexec_fn"] = functools.partial(_prepare_child, os.getpid() if term_with_parent else None, fds)
    if fds:
        # not ``pass_fds``: those numbers must already be open here. This process's own descriptors are not
        # inheritable (PEP 446), so the child gets the numbered ones and its standard streams
        popen_args["close_fds"] = False
    return subprocess.Popen(list(command), start_new_session=True, **popen_args)


def _prepare_child(parent: int | None, fds: Mapping[int, int] | None) -> None:
    """In the child, before it executes: its numbered descriptors (``fds``, sources above them), then the
    parent-death signal."""
    for number, source in (fds or {}).items():
        os.dup2(source, number)
    if parent is not None:
        _term_when_gone(parent)


PR_SET_PDEATHSIG = 1


def _term_when_gone(parent: int) -> None:
    """In the child, before it executes: SIGTERM once ``parent`` ends (already, if it ended before this ran)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def process_tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and all its descendants now ([] when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def alive(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` still running (zombies count as gone: they only wait to be reaped)."""
    running = []
    for candidate in processes:
        with contextlib.suppress(psutil.Error):
            if candidate.is_running() and candidate.status() != psutil.STATUS_ZOMBIE:
                running.append(candidate)
    return running


def end_within(processes: Iterable[psutil.Process], grace: float) -> None:
    """Wait until ``processes`` have ended (zombies count: a re-parented process is reaped whenever its new parent
    gets to it), SIGKILL those left after ``grace`` seconds and give them up to a second more."""
    processes = list(processes)
    deadline = time.monotonic() + grace
    while (left := alive(processes)) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    deadline = time.monotonic() + 1
    while alive(left) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)


def kill_tree(root: psutil.Process) -> None:
    """SIGKILL ``root`` and every process below it, and nothing else; safe when they are already gone."""
    with contextlib.suppress(psutil.Error):
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                process.kill()


def signal_group(group: int, signum: int) -> None:
    """``signum`` to process group ``group``; nothing when the group is gone (or not ours)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def stop_group(process: subprocess.Popen, grace: float) -> None:
    """Stop a child started by :func:`start_group` and wait until its whole tree has exited.

    SIGTERM (then SIGCONT, so stopped members act on it) goes to its process group; the child and
    every process of its tree (snapshot taken before the signal, so helpers in other sessions count
    too) get ``grace`` seconds to exit; what is left is SIGKILLed, and so is anything the group
    started after the snapshot. The child is reaped. Safe to call after the child exited (its
    group's stragglers are still stopped).
    """
    stop_groups([process], grace)


def stop_groups(processes: Sequence[subprocess.Popen], grace: float) -> None:
    """:func:`stop_group` for several children at once: all are signalled first, so the grace is shared.

    Stopped one after the other, a webserver and a daemon would take up to twice ``grace``, more
    than a service manager waits between SIGTERM and SIGKILL.
    """
    begin_stop(processes, grace).finish()


@dataclass
class Stopping:
    """Groups that were sent SIGTERM (see :func:`begin_stop`); ``finish`` waits out their grace, then kills."""

    processes: Sequence[subprocess.Popen]
    trees: list[list[psutil.Process]]
    deadline: float

    def finish(self, while_waiting: Callable[[], None] | None = None) -> None:
        """``while_waiting`` is called on every poll until the groups are gone (bookkeeping that must outlast them)."""
        while time.monotonic() < self.deadline and any(
            process.poll() is None or alive(tree) for process, tree in zip(self.processes, self.trees, strict=True)
        ):
            if while_waiting is not None:
                while_waiting()
            time.sleep(POLL_SECONDS)
        for process, tree in zip(self.processes, self.trees, strict=True):
            for leftover in alive(tree):
                with contextlib.suppress(psutil.Error):
                    leftover.kill()
            signal_group(process.pid, signal.SIGKILL)
            process.wait()


def begin_stop(processes: Sequence[subprocess.Popen], grace: float) -> Stopping:
    """Send the groups of ``processes`` SIGTERM now and return at once; their ``grace`` runs from now.

    Lets a caller do other clean-up (bookkeeping in a database) while the processes shut down, so both
    fit in one grace period.
    """
    trees = [process_tree(process.pid) if process.poll() is None else [] for process in processes]
    for process in processes:
        signal_group(process.pid, signal.SIGTERM)
        signal_group(process.pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
    return Stopping(processes, trees, time.monotonic() + grace)


def stop_group_on(event: threading.Event, process: subprocess.Popen, grace: float, name: str) -> threading.Thread:
    """A daemon thread that calls :func:`stop_group` once ``event`` is set (and ends with the child)."""

    def watch() -> None:
        while process.poll() is None:
            if event.wait(POLL_SECONDS):
                stop_group(process, grace)
                return

    thread = threading.Thread(target=watch, daemon=True, name=name)
    thread.start()
    return thread


def kill_now(process: subprocess.Popen) -> None:
    """SIGKILL one child (not its group) and reap it; a no-op when it already exited."""
    if process.poll() is None:
        process.kill()
    process.wait()


_THREAD_TAGS = threading.local()


@contextlib.contextmanager
def tag_children(name: str, value: str) -> Iterator[None]:
    """Processes this thread starts inside the block carry ``name=value`` in their environment (and pass it
    on to theirs): a chunk rendered in the caller's own process marks its Chromium and FFmpeg the way a
    chunk worker's environment marks everything below it, so strays are found alike."""
    previous: dict[str, str] = getattr(_THREAD_TAGS, "env", {})
    _THREAD_TAGS.env = {**previous, name: value}
    try:
        yield
    finally:
        _THREAD_TAGS.env = previous


def thread_tags() -> dict[str, str]:
    """The variables ``tag_children`` set for this thread (empty outside its block)."""
    return dict(getattr(_THREAD_TAGS, "env", {}))


def child_env() -> dict[str, str] | None:
    """The environment for a process this thread starts: None (this process's own) unless tagged."""
    tags = thread_tags()
    return {**os.environ, **tags} if tags else None


def processes_with_env(name: str, prefix: str) -> list[psutil.Process]:
    """Live processes whose environment has ``name`` starting with ``prefix``: stragglers of a job.

    A job that exports a marker variable (chunk workers export ``HELIOS_CHUNK_OUTPUT``) passes it
    to everything it starts, orphans included, so this finds what a stop may have missed.
    """
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(name, "").startswith(prefix) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found
