"""Environment report: which Chromium and FFmpeg will be used, their versions and codecs."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from importlib import metadata

from helios_pipeline.engine.errors import ToolNotFoundError
from helios_pipeline.engine.ffmpeg import encoder_kinds
from helios_pipeline.engine.tools import chromium_path, ffmpeg_path, ffprobe_path

WANTED_ENCODERS = ("libx264", "libx265", "libvpx-vp9", "libaom-av1", "prores_ks", "aac", "libopus", "pcm_s16le")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _first_line(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else f"exit code {result.returncode}"


def ffmpeg_encoders() -> set[str]:
    return set(encoder_kinds())


def run_checks() -> list[Check]:
    """Each tool the engine needs, found or not, with how to fix what is missing."""
    checks: list[Check] = []
    for name, finder, version_args in (
        ("chromium", chromium_path, ["--version"]),
        ("ffmpeg", ffmpeg_path, ["-version"]),
        ("ffprobe", ffprobe_path, ["-version"]),
    ):
        try:
            path = finder()
            checks.append(Check(name, True, f"{path} ({_first_line([path, *version_args])})"))
        except (ToolNotFoundError, OSError, subprocess.TimeoutExpired) as exc:
            checks.append(Check(name, False, str(exc)))
    if all(check.ok for check in checks if check.name == "ffmpeg"):
        available = ffmpeg_encoders()
        for encoder in WANTED_ENCODERS:
            checks.append(
                Check(f"encoder {encoder}", encoder in available, "available" if encoder in available else "missing")
            )
    for package in ("dagster",):
        try:
            checks.append(Check(package, True, metadata.version(package)))
        except metadata.PackageNotFoundError:
            checks.append(Check(package, False, f"not installed: pip install {package}"))
    return checks
