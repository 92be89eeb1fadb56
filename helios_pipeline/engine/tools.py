"""Find FFmpeg, ffprobe and Chromium: environment overrides, then Playwright's browser, then Debian's."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

from helios_pipeline.engine.errors import ToolNotFoundError

CHROMIUM_CANDIDATES = ("/usr/bin/chromium-headless-shell", "/usr/bin/chromium", "/usr/bin/chromium-browser")
INSTALL_HINT_BROWSER = (
    "install one with `apt-get install chromium-headless-shell` (or `chromium`), or "
    "`pip install playwright && python -m playwright install chromium-headless-shell`, "
    "or set HELIOS_CHROMIUM to a Chromium binary"
)
INSTALL_HINT_FFMPEG = "install it with `apt-get install ffmpeg`, or set {var} to its path"


def _from_env(var: str) -> str | None:
    value = os.environ.get(var)
    if not value:
        return None
    path = shutil.which(value) or value
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        raise ToolNotFoundError(f"{var}={value!r} is not an executable file")
    return path


def _playwright_chromium() -> str | None:
    """A Playwright-managed browser, if one was installed with `playwright install`."""
    cache = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or Path.home() / ".cache" / "ms-playwright")
    if not cache.is_dir():
        return None
    for pattern in ("chromium_headless_shell-*/*/chrome-headless-shell", "chromium-*/chrome-linux*/chrome"):
        found = sorted(cache.glob(pattern))
        if found:
            return str(found[-1])
    return None


@functools.cache
def chromium_path() -> str:
    """The Chromium binary to launch (HELIOS_CHROMIUM, then Playwright's, then the system's)."""
    found = _from_env("HELIOS_CHROMIUM") or _playwright_chromium()
    if found:
        return found
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise ToolNotFoundError(f"Chromium not found; {INSTALL_HINT_BROWSER}")


def _ffmpeg_tool(name: str, var: str) -> str:
    found = _from_env(var) or shutil.which(name)
    if not found:
        raise ToolNotFoundError(f"{name} not found on PATH; {INSTALL_HINT_FFMPEG.format(var=var)}")
    return found


@functools.cache
def ffmpeg_path() -> str:
    return _ffmpeg_tool("ffmpeg", "HELIOS_FFMPEG")


@functools.cache
def ffprobe_path() -> str:
    """ffprobe beside HELIOS_FFMPEG when that is set, else on PATH (or HELIOS_FFPROBE)."""
    override = os.environ.get("HELIOS_FFPROBE")
    if not override and os.environ.get("HELIOS_FFMPEG"):
        sibling = Path(ffmpeg_path()).with_name("ffprobe")
        if sibling.is_file():
            return str(sibling)
    return _ffmpeg_tool("ffprobe", "HELIOS_FFPROBE")


@functools.cache
def ffmpeg_version() -> str:
    """The first line of ``ffmpeg -version`` (e.g. ``ffmpeg version 5.1.9-0+deb12u1 ...``), once per process.

    Recorded with every chunk, so a cluster whose workers run different builds can be told apart.
    """
    command = [ffmpeg_path(), "-hide_banner", "-version"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolNotFoundError(f"cannot run {ffmpeg_path()} -version: {exc}") from None
    lines = (result.stdout or result.stderr).strip().splitlines()
    if result.returncode != 0 or not lines:
        raise ToolNotFoundError(f"{ffmpeg_path()} -version failed with exit code {result.returncode}")
    return lines[0]
