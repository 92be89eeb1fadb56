"""The one way the engine runs FFmpeg and ffprobe.

Every FFmpeg call starts with the same head (quiet, no stdin, overwrite) and every failure becomes
a :class:`RenderError` that says what was being made and ends with FFmpeg's last stderr lines, so
a failed concat, mix or chunk encode reads the same way wherever it happened; a full disk becomes
a :class:`NoSpaceError` naming the output file instead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import psutil

from helios_pipeline.disk_full import no_space_message, no_space_reported
from helios_pipeline.engine.errors import NoSpaceError, RenderError
from helios_pipeline.engine.tools import ffmpeg_path, ffprobe_path
from helios_pipeline.processes import child_env, kill_now

HEAD = ("-hide_banner", "-loglevel", "error", "-nostdin", "-y")
"""Flags of every FFmpeg command: errors only, never read the terminal, overwrite the (temporary) output."""

STDERR_TAIL_LINES = 20
"""How many of FFmpeg's last stderr lines an error carries."""


def ffmpeg_command(*args: str) -> list[str]:
    """``ffmpeg`` with the common head, then ``args`` (inputs, filters, outputs)."""
    return [ffmpeg_path(), *HEAD, *args]


def stderr_tail(stderr: str | bytes, lines: int = STDERR_TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of a tool's stderr, as one string."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def output_of(command: list[str]) -> str:
    """The file an FFmpeg command writes: its last argument (every engine command ends with its output)."""
    return command[-1] if command and not command[-1].startswith(("-", "pipe:")) else "its output"


def _failure(what: str, returncode: int | None, stderr: str | bytes, output: str) -> RenderError:
    detail = stderr_tail(stderr) or f"FFmpeg exited with status {returncode}"
    if (code := no_space_reported(detail)) is not None:  # the cause and the path, not FFmpeg's muxer chatter
        return NoSpaceError(f"{what} failed: {no_space_message(output, code)}")
    return RenderError(f"{what} failed: {detail}")


def _failed(returncode: int | None, stderr: str | bytes) -> bool:
    """A non-zero exit, or a full disk FFmpeg reported yet exited 0 for (FFmpeg 5.1's MP4 muxer does when
    its trailer cannot be written: the file is truncated, and must not be taken for a finished output)."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    return returncode != 0 or no_space_reported(text) is not None


def run_ffmpeg(command: list[str], what: str) -> None:
    """Run a finished FFmpeg command to its end; on failure raise ``RenderError("<what> failed: <stderr>")``."""
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=child_env())
    if _failed(result.returncode, result.stderr):
        raise _failure(what, result.returncode, result.stderr, output_of(command))


def ffmpeg_stdout(command: list[str], what: str) -> bytes:
    """Run a finished FFmpeg command that writes to ``pipe:1`` and return what it wrote (no file is made).

    On failure raises ``RenderError("<what> failed: <stderr>")``.
    """
    result = subprocess.run(command, capture_output=True, check=False, env=child_env())
    if result.returncode != 0:
        raise _failure(what, result.returncode, result.stderr)
    return result.stdout


def run_ffprobe(target: str | Path, *args: str, what: str | None = None) -> dict[str, Any]:
    """ffprobe's JSON about ``target`` (a file or URL) for ``args`` (``-show_entries``...).

    On failure raises ``RenderError("<what>: <stderr>")``; ``what`` defaults to "ffprobe could not read <target>".
    """
    command = [ffprobe_path(), "-v", "error", "-of", "json", *args, str(target)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=child_env())
    if result.returncode != 0:
        raise RenderError(f"{what or f'ffprobe could not read {target}'}: {stderr_tail(result.stderr)}")
    return json.loads(result.stdout or "{}")


@functools.cache
def encoder_kinds() -> dict[str, str]:
    """Every encoder of this FFmpeg by name, with its kind: ``V`` video, ``A`` audio, ``S`` subtitles."""
    result = subprocess.run(
        [ffmpeg_path(), "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30, check=False
    )
    kinds = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] in "VAS":
            kinds[parts[1]] = parts[0][0]
    return kinds


@functools.cache
def encoder_pixel_formats(encoder: str) -> tuple[str, ...]:
    """The pixel formats ``encoder`` takes, as ``ffmpeg -h encoder=`` lists them (empty when it lists none).

    Given another, FFmpeg silently encodes a format of its choosing instead of the one asked for.
    """
    result = subprocess.run(
        [ffmpeg_path(), "-hide_banner", "-h", f"encoder={encoder}"], capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    for line in result.stdout.splitlines():
        label, _, formats = line.strip().partition(":")
        if label == "Supported pixel formats":
            return tuple(formats.split())
    return ()


class FFmpegProcess:
    """FFmpeg running beside the caller (fed through stdin, or reading its own inputs).

    Its stderr is drained by a thread so a chatty FFmpeg can never block on a full pipe; ``wait``
    turns a failure or a time-out into a ``RenderError`` naming ``what``.
    """

    def __init__(self, command: list[str], what: str, *, stdin: bool = False):
        self.command = command
        self.what = what
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_env(),
        )
        self._stderr = b""
        self._reader = threading.Thread(target=self._read_stderr, name="helios-ffmpeg-stderr", daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        with self._process.stderr:
            self._stderr = self._process.stderr.read()

    @property
    def stdin(self) -> Any:
        """The pipe into FFmpeg (only when started with ``stdin=True``)."""
        return self._process.stdin

    @property
    def returncode(self) -> int | None:
        return self._process.poll()

    def cpu_seconds(self) -> float | None:
        """CPU time FFmpeg has used so far (all its threads), None once it is gone: tells working from stuck."""
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(self._process.pid).cpu_times()
            return times.user + times.system
        return None

    def exited_within(self, seconds: float) -> bool:
        """Whether FFmpeg exits within ``seconds``: returns as soon as it does, unlike a sleep between polls."""
        try:
            self._process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def wait(self, timeout: float) -> None:
        """Wait for FFmpeg to end; raise ``RenderError`` when it fails or outlives ``timeout`` seconds."""
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RenderError(f"{self.what}: FFmpeg did not finish within {timeout} s") from None
        self._reader.join(timeout=5)
        if _failed(self._process.returncode, self._stderr):
            raise self.failure()

    def failure(self, fallback: object = None) -> RenderError:
        """The error for a failed FFmpeg (stop it first): its stderr, else ``fallback``, else its exit code."""
        self._reader.join(timeout=5)
        if not stderr_tail(self._stderr) and fallback is not None:
            return RenderError(f"{self.what} failed: {fallback}")
        return _failure(self.what, self._process.returncode, self._stderr, output_of(self.command))

    def kill(self) -> None:
        """Stop FFmpeg now (cancel or failure); safe to call twice."""
        kill_now(self._process)
        self._reader.join(timeout=5)
