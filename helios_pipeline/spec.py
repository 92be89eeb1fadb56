"""The render spec: the users' YAML/JSON file format, validated with pydantic.

Keys are snake_case; Helios's camelCase option names are accepted as aliases so that a Helios
``RendererOptions`` object works unchanged. Relative paths are resolved against the spec file's
folder (or the working directory for specs built in code), so a validated spec is self-contained.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

FRAME_TOLERANCE = 1e-6
"""How far (in frames) ``duration * fps`` may be from an integer and still count as that integer."""
_FRAME_REL_TOLERANCE = 1e-12
"""Relative slack for float noise in very long renders; far below a frame for any real length."""

_KEY_UNSAFE = re.compile(r"[^a-z0-9_-]+")


class SpecError(ValueError):
    """An invalid render spec; the message names the file, the field and the reason."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {field}: {reason}" if field else f"{source}: {reason}" for field, reason in problems]
        super().__init__("invalid render spec\n  " + "\n  ".join(lines))


def sanitize_key(raw: str) -> str:
    """Lower-case ``raw`` and squash anything outside ``[a-z0-9_-]`` (Dagster partition keys, file names)."""
    key = _KEY_UNSAFE.sub("-", raw.strip().lower()).strip("-_")
    return key or "render"


def default_concurrency() -> int:
    return max(1, (os.cpu_count() or 1) - 1)


def frames_for_duration(duration_in_seconds: float, fps: float) -> int:
    """Whole frames in a duration: exact products round (4.1 s x 30 = 123), others round up."""
    exact = duration_in_seconds * fps
    nearest = round(exact)
    if math.isclose(exact, nearest, rel_tol=_FRAME_REL_TOLERANCE, abs_tol=FRAME_TOLERANCE):
        return int(nearest)
    return math.ceil(exact)


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context or {}
    return Path(context.get("base_dir") or Path.cwd())


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
    )


class AudioTrack(_Model):
    """One explicit audio track, placed on the render's global timeline."""

    path: Path
    volume: float = Field(1.0, ge=0)
    offset: float = Field(0.0, ge=0, description="seconds on the timeline where the track starts")
    seek: float = Field(0.0, ge=0, description="seconds into the source where playback starts")
    loop: bool = False
    fade_in_duration: float = Field(0.0, ge=0)
    fade_out_duration: float = Field(0.0, ge=0)
    playback_rate: float = Field(1.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _accept_bare_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str | Path) else value

    @field_validator("path")
    @classmethod
    def _resolve_existing(cls, value: Path, info: ValidationInfo) -> Path:
        resolved = (_base_dir(info) / value).resolve()
        if not resolved.is_file():
            raise ValueError(f"audio file not found: {resolved}")
        return resolved


class RenderSpec(_Model):
    """Everything needed to render one composition to one video."""

    name: str = "render"
    composition: str = Field(description="http(s) URL, an .html file, or a folder holding index.html")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    fps: float = Field(gt=0)
    duration_in_seconds: float | None = Field(None, gt=0)
    frame_count: int | None = Field(None, gt=0)
    start_frame: int = Field(0, ge=0)
    mode: Literal["dom", "canvas"] = "dom"
    concurrency: int = Field(default_factory=default_concurrency, ge=1)
    video_codec: str = "libx264"
    pixel_format: str = "yuv420p"
    crf: int | None = Field(23, ge=0, le=63)
    preset: str | None = "medium"
    video_bitrate: str | None = None
    audio_codec: str = "aac"
    audio_bitrate: str | None = "192k"
    audio_tracks: tuple[AudioTrack, ...] = ()
    input_props: dict[str, Any] = Field(default_factory=dict)
    random_seed: int = 0x12345678
    intermediate_image_format: Literal["jpeg", "png"] = "jpeg"
    intermediate_image_quality: int = Field(90, ge=1, le=100)
    stability_timeout: float = Field(
        30000, gt=0, description="ms a frame may take to become ready (fonts, images, waitUntilStable)"
    )
    output: Path | None = None

    @field_validator("name")
    @classmethod
    def _sanitize_name(cls, value: str) -> str:
        return sanitize_key(value)

    @field_validator("composition")
    @classmethod
    def _resolve_composition(cls, value: str, info: ValidationInfo) -> str:
        parsed = urlparse(value)
        if parsed.scheme in ("http", "https"):
            if not parsed.netloc:
                raise ValueError(f"URL has no host: {value!r}")
            return value
        if parsed.scheme == "file":
            value = parsed.path
        elif parsed.scheme and len(parsed.scheme) > 1:
            raise ValueError(f"unsupported URL scheme {parsed.scheme!r} (use http(s), a file or a folder)")
        path = (_base_dir(info) / value).resolve()
        if path.is_dir():
            for entry in ("index.html", "composition.html"):
                if (path / entry).is_file():
                    return str(path / entry)
            raise ValueError(f"folder {path} has neither index.html nor composition.html")
        if not path.is_file():
            raise ValueError(f"composition not found: {path}")
        return str(path)

    @field_validator("output")
    @classmethod
    def _resolve_output(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else (_base_dir(info) / value).resolve()

    @model_validator(mode="after")
    def _check_length_and_mode(self, info: ValidationInfo) -> RenderSpec:
        if self.frame_count is None and self.duration_in_seconds is None:
            raise ValueError("one of duration_in_seconds or frame_count is required")
        if self.frame_count is not None and self.duration_in_seconds is not None:
            implied = frames_for_duration(self.duration_in_seconds, self.fps)
            if implied != self.frame_count:
                raise ValueError(
                    f"frame_count {self.frame_count} disagrees with duration_in_seconds "
                    f"{self.duration_in_seconds} at {self.fps} fps ({implied} frames); give one of them"
                )
        if self.mode == "canvas":
            raise ValueError("mode 'canvas' is not supported yet; use mode: dom")
        if self.output is None:
            object.__setattr__(self, "output", (_base_dir(info) / "out" / f"{self.name}.mp4").resolve())
        return self

    @property
    def total_frames(self) -> int:
        """The one integer every loop bound derives from."""
        if self.frame_count is not None:
            return self.frame_count
        assert self.duration_in_seconds is not None
        return frames_for_duration(self.duration_in_seconds, self.fps)

    @property
    def is_local(self) -> bool:
        return not self.composition.startswith(("http://", "https://"))

    @property
    def output_path(self) -> Path:
        assert self.output is not None
        return self.output

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-safe dump that validates back to the same spec (absolute paths)."""
        return json.loads(self.model_dump_json())


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def validate_spec(data: dict[str, Any], *, base_dir: Path, source: str) -> RenderSpec:
    """Validate a spec mapping; paths in it are relative to ``base_dir``."""
    try:
        return RenderSpec.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = _format_loc(tuple(error["loc"])) or "(spec)"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append((field, message))
        raise SpecError(source, problems) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (values parsed as YAML, dotted keys reach into mappings)."""
    merged = json.loads(json.dumps(data, default=str))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError("--set", [(item, "expected key=value")])
        target = merged
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise SpecError("--set", [(key, f"{parent} is not a mapping")])
        target[leaf] = yaml.safe_load(raw)
    return merged


def read_spec_file(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON spec file into a mapping, with errors that name the file."""
    source = str(path)
    if not path.is_file():
        raise SpecError(source, [("", "spec file not found")])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(source, [("", f"not valid YAML/JSON: {exc}")]) from None
    if not isinstance(data, dict):
        raise SpecError(source, [("", "the spec must be a mapping of keys to values")])
    data.setdefault("name", path.stem)
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None) -> RenderSpec:
    """Load, override and validate a spec file."""
    spec_path = Path(path).resolve()
    data = apply_overrides(read_spec_file(spec_path), overrides or [])
    return validate_spec(data, base_dir=spec_path.parent, source=str(spec_path))
