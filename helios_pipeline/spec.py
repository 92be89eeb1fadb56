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
import unicodedata
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote, urlparse

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
from pydantic_core import InitErrorDetails, PydanticCustomError

from helios_pipeline.codec_limits import frame_problems
from helios_pipeline.containers import container_problem
from helios_pipeline.fargate import cpu_problem, memory_problem
from helios_pipeline.frame_ref import FrameError, FrameRef, parse_frame
from helios_pipeline.network import NetworkPolicy
from helios_pipeline.srt import SrtError, read_srt
from helios_pipeline.storage.location import split_s3_uri

FRAME_TOLERANCE = 1e-6
"""How far (in frames) ``duration * fps`` may be from an integer and still count as that integer."""
ALPHA_PIXEL_FORMAT_TAGS = ("yuva", "rgba", "bgra", "argb", "abgr", "gbrap", "ya8", "ya16")
ALPHA_CODECS = ("libvpx-vp9", "libvpx", "prores_ks", "png", "qtrle", "ffv1", "utvideo")
_FRAME_REL_TOLERANCE = 1e-12
"""Relative slack for float noise in very long renders; far below a frame for any real length."""
MIN_FPS, MAX_FPS = 1, 240
"""The frame rates a render may have: below 1 fps a frame outlasts any sensible seek step, above 240
no display shows the difference (and every frame still costs a browser capture)."""
SPEC_SUFFIXES = (".yaml", ".yml", ".json")
"""Sources that are spec files; anything else given to :func:`resolve_spec` is a composition."""

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
    ascii_text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    key = _KEY_UNSAFE.sub("-", ascii_text.strip().lower()).strip("-_")
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


def _field_error(field: str, message: str) -> PydanticCustomError:
    """A model-level error that still names its field (``validate_spec`` reads ``ctx.field``)."""
    return PydanticCustomError("spec_field", message, {"field": field})


def _field_errors(problems: list[tuple[str, str]]) -> ValidationError:
    """Several model-level errors at once, each naming its field, so one validation reports them all."""
    details = [
        InitErrorDetails(type=_field_error(field, message), loc=(field,), input=None) for field, message in problems
    ]
    return ValidationError.from_exception_data("RenderSpec", details)


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context or {}
    return Path(context.get("base_dir") or Path.cwd())


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        allow_inf_nan=False,
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


class WorkerResources(_Model):
    """The task size of one chunk worker on ECS/Kubernetes; checked against Fargate's sizes so a
    render is refused when it loads, not when the cluster rejects its first task."""

    cpu: int = Field(description="ECS CPU units (1024 = one vCPU)")
    memory: int = Field(description="MiB")

    @field_validator("cpu")
    @classmethod
    def _fargate_cpu(cls, value: int) -> int:
        if problem := cpu_problem(value):
            raise ValueError(problem)
        return value

    @field_validator("memory")
    @classmethod
    def _fargate_memory(cls, value: int, info: ValidationInfo) -> int:
        cpu = info.data.get("cpu")
        if cpu is not None and (problem := memory_problem(cpu, value)):
            raise ValueError(problem)
        return value


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
    frames_per_chunk: int | None = Field(
        None, ge=1, description="chunks of at most this many frames; concurrency then caps how many render at once"
    )
    video_codec: str = "libx264"
    pixel_format: str = "yuv420p"
    crf: int | None = Field(23, ge=0, le=63)
    preset: str | None = "medium"
    video_bitrate: str | None = None
    audio_codec: str = "aac"
    audio_bitrate: str | None = "192k"
    audio_tracks: tuple[AudioTrack, ...] = ()
    subtitles: Path | None = Field(
        None, description="SRT file burned into the picture; cue times are composition times"
    )
    input_props: dict[str, Any] = Field(default_factory=dict)
    random_seed: int = 0x12345678
    canvas_selector: str = Field("canvas", description="canvas mode: the <canvas> whose pixels are the frame")
    intermediate_video_codec: str | None = Field(
        None, description="canvas mode: WebCodecs codec (avc1.*, vp8, vp09.*, vp9, av01.*); default: probed"
    )
    web_codecs_preference: Literal["hardware", "software", "disabled"] = "hardware"
    intermediate_image_format: Literal["jpeg", "png"] = "jpeg"
    intermediate_image_quality: int = Field(90, ge=1, le=100)
    stability_timeout: float = Field(
        30000, gt=0, description="ms a frame may take to become ready (fonts, images, waitUntilStable)"
    )
    output: str | Path | None = Field(
        None, description="the video file to write: a path, or s3://bucket/key.mp4 (uploaded when done)"
    )
    schedule: str | None = Field(None, description="cron string: Dagster re-renders the spec on this schedule")
    timezone: str | None = Field(None, description="IANA timezone of the schedule (default UTC)")
    worker: WorkerResources | None = Field(None, description="chunk worker task size; default: sized from the frame")
    poster_frame: FrameRef | None = Field(
        None,
        description="a frame (75) or time (2.5s) of the video, also written as a still beside it "
        "(<stem>.poster.png); validated against the frame count and stored as the frame number",
    )
    network: NetworkPolicy | None = Field(
        None, description="what the page may connect to besides its own origin; default: public addresses"
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name_from_number(cls, value: Any) -> Any:
        # YAML reads `name: 2025` as an integer; a number is a fine render name.
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("name")
    @classmethod
    def _sanitize_name(cls, value: str) -> str:
        return sanitize_key(value)

    @field_validator("fps")
    @classmethod
    def _fps_in_range(cls, value: float) -> float:
        if not MIN_FPS <= value <= MAX_FPS:
            raise ValueError(f"{value:g} is outside the supported range of {MIN_FPS} to {MAX_FPS} frames per second")
        return value

    @field_validator("composition")
    @classmethod
    def _resolve_composition(cls, value: str, info: ValidationInfo) -> str:
        parsed = urlparse(value)
        if parsed.scheme in ("http", "https"):
            if not parsed.hostname:
                raise ValueError(f"URL has no host: {value!r}")
            try:
                parsed.port  # noqa: B018 - raises on a port that is not a number in 0-65535
            except ValueError as exc:
                raise ValueError(f"invalid URL {value!r}: {exc}") from None
            if any(char.isspace() for char in value):
                raise ValueError(f"invalid URL {value!r}: contains whitespace")
            return value
        if parsed.scheme == "file":
            path = (_base_dir(info) / unquote(parsed.path)).resolve()
            raise ValueError(f"file:// URLs are not supported; give the composition's path instead: {path}")
        if parsed.scheme and len(parsed.scheme) > 1:
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

    @field_validator("subtitles")
    @classmethod
    def _resolve_subtitles(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        resolved = (_base_dir(info) / value).resolve()
        if not resolved.is_file():
            raise ValueError(f"subtitle file not found: {resolved}")
        try:
            read_srt(resolved)
        except SrtError as exc:
            raise ValueError(f"not a valid SRT file: {exc}") from None
        return resolved

    @model_validator(mode="after")
    def _check_subtitles_are_encoded(self) -> RenderSpec:
        if self.subtitles is not None and self.video_codec == "copy":
            raise _field_error("subtitles", "subtitles are burned into the picture: they need a video_codec, not copy")
        return self

    @field_validator("poster_frame", mode="before")
    @classmethod
    def _poster_frame_is_a_reference(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | str)):
            raise ValueError(f"{value!r} is not a frame: give a frame number (75) or a time in seconds (2.5s)")
        return value

    @field_validator("output")
    @classmethod
    def _resolve_output(cls, value: Path | str | None, info: ValidationInfo) -> Path | str | None:
        if value is None:
            return None
        if isinstance(value, str) and value.startswith("s3://"):
            bucket, key = split_s3_uri(value, what="output")
            if not key or key.endswith("/"):
                raise ValueError(f"{value!r} names no object: give s3://bucket/path/video.mp4")
            return f"s3://{bucket}/{key}"
        resolved = (_base_dir(info) / value).resolve()
        if resolved.is_dir():
            raise ValueError(f"{resolved} is a folder; give the path of the video file to write")
        return resolved

    @model_validator(mode="after")
    def _check_length_and_mode(self, info: ValidationInfo) -> RenderSpec:
        if self.frame_count is None and self.duration_in_seconds is None:
            raise _field_error("frame_count", "one of duration_in_seconds or frame_count is required")
        if self.frame_count is not None and self.duration_in_seconds is not None:
            implied = frames_for_duration(self.duration_in_seconds, self.fps)
            if implied != self.frame_count:
                raise _field_error(
                    "frame_count",
                    f"{self.frame_count} disagrees with duration_in_seconds {self.duration_in_seconds} "
                    f"at {self.fps:g} fps ({implied} frames); give one of them",
                )
        if self.video_codec == "copy" and self.mode != "canvas":
            raise _field_error("video_codec", "'copy' keeps the in-page WebCodecs stream: it needs mode: canvas")
        if self.has_alpha:
            self._check_alpha()
        if self.output is None:
            object.__setattr__(self, "output", (_base_dir(info) / "out" / f"{self.name}.mp4").resolve())
        problem = container_problem(Path(str(self.output)), self.video_codec, self.intermediate_video_codec)
        if problem:
            raise _field_error("output", problem)
        output = Path(str(self.output))
        if problems := frame_problems(self.video_codec, self.pixel_format, self.width, self.height, self.fps, output):
            raise _field_errors(problems)
        return self

    @model_validator(mode="after")
    def _resolve_poster_frame(self) -> RenderSpec:
        """``2.5s`` becomes its frame number here, so every later reader sees one integer."""
        if self.poster_frame is not None:
            try:
                frame = parse_frame(self.poster_frame, self.fps, self.total_frames)
            except FrameError as exc:
                raise _field_error("poster_frame", str(exc)) from None
            object.__setattr__(self, "poster_frame", frame)
        return self

    @property
    def has_alpha(self) -> bool:
        """A pixel format with an alpha channel: the page background renders transparent."""
        return any(tag in self.pixel_format for tag in ALPHA_PIXEL_FORMAT_TAGS)

    def _check_alpha(self) -> None:
        if self.video_codec not in ALPHA_CODECS:
            raise _field_error(
                "video_codec",
                f"{self.video_codec} cannot store the alpha of pixel_format {self.pixel_format}; use "
                "libvpx-vp9 (yuva420p, .webm) or prores_ks (yuva444p10le, .mov)",
            )
        if self.intermediate_image_format == "jpeg":
            if "intermediate_image_format" in self.model_fields_set:
                raise _field_error("intermediate_image_format", "jpeg has no alpha channel; use png")
            object.__setattr__(self, "intermediate_image_format", "png")  # transparency needs PNG capture

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
    def output_uri(self) -> str | None:
        """The ``s3://`` URI of a remote output, else None."""
        return self.output if isinstance(self.output, str) else None

    @property
    def output_path(self) -> Path:
        """The local output file; for an ``s3://`` output, its file name (the video is made locally, then uploaded)."""
        assert self.output is not None
        if isinstance(self.output, str):
            return Path(PurePosixPath(self.output).name)
        return self.output

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-safe dump that validates back to the same spec (absolute paths)."""
        return json.loads(self.model_dump_json())


def _aliases(model: type[BaseModel]) -> dict[str, str]:
    return {info.alias: name for name, info in model.model_fields.items() if info.alias and info.alias != name}


_SPEC_ALIASES = _aliases(RenderSpec)
_TRACK_ALIASES = _aliases(AudioTrack)


def _snake_keys(data: dict[Any, Any], aliases: dict[str, str], prefix: str, problems: list[tuple[str, str]]) -> dict:
    renamed: dict[Any, Any] = {}
    spelled: dict[Any, Any] = {}
    for key, value in data.items():
        name = aliases.get(key, key) if isinstance(key, str) else key
        if name in renamed:
            problems.append((f"{prefix}{name}", f"given twice, as {spelled[name]} and {key}"))
        renamed[name], spelled[name] = value, key
    return renamed


def normalize_keys(data: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Rename Helios camelCase keys to snake_case (top level and audio tracks), so merges and errors
    see one spelling; a key given in both spellings is an error."""
    problems: list[tuple[str, str]] = []
    result = _snake_keys(data, _SPEC_ALIASES, "", problems)
    tracks = result.get("audio_tracks")
    if isinstance(tracks, list | tuple):
        result["audio_tracks"] = [
            _snake_keys(track, _TRACK_ALIASES, f"audio_tracks[{index}].", problems)
            if isinstance(track, dict)
            else track
            for index, track in enumerate(tracks)
        ]
    if problems:
        raise SpecError(source, problems)
    return result


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
    data = normalize_keys(data, source=source)
    try:
        return RenderSpec.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = _format_loc(tuple(error["loc"])) or str(error.get("ctx", {}).get("field", "")) or "(spec)"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append((field, message))
        raise SpecError(source, problems) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (values parsed as YAML; dotted keys reach into mappings and lists,
    e.g. ``input_props.title=Hi`` or ``audio_tracks.0.volume=0.5``; camelCase keys are accepted)."""
    merged = json.loads(json.dumps(data, default=str))
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError("--set", [(item, "expected key=value")])
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise SpecError("--set", [(key, f"not a valid YAML value {raw!r}: {_yaml_problem(exc)}")]) from None
        first, *rest = key.split(".")
        first = _SPEC_ALIASES.get(first, first)
        for alias, name in _SPEC_ALIASES.items():
            if name == first and alias in merged:  # data not yet normalised: one spelling only
                merged.setdefault(name, merged.pop(alias))
        *parents, leaf = [first, *rest]
        target: Any = merged
        for depth, parent in enumerate(parents):
            target = _step_into(target, parent, ".".join(parents[: depth + 1]), key)
        if isinstance(target, list):
            target[_list_index(target, leaf, key, key)] = value
        else:
            target[leaf] = value
    return merged


def _list_index(target: list[Any], part: str, where: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(target):
        raise SpecError("--set", [(key, f"{where} has no item {part} (it has {len(target)})")])
    return int(part)


def _step_into(target: Any, part: str, where: str, key: str) -> Any:
    if isinstance(target, list):
        index = _list_index(target, part, where, key)
        if where.startswith("audio_tracks.") and isinstance(target[index], str):
            target[index] = {"path": target[index]}  # a bare track path gains keys
        child = target[index]
    else:
        child = target.setdefault(part, {})
    if not isinstance(child, dict | list):
        raise SpecError("--set", [(key, f"{where} is not a mapping")])
    return child


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message in one line: what went wrong and where."""
    problem = getattr(exc, "problem", None)
    if not problem:
        return " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{context}: {problem}{where}" if context else f"{problem}{where}"


def read_spec_file(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON spec file into a mapping, with errors that name the file."""
    source = str(path)
    if not path.is_file():
        raise SpecError(source, [("", "spec file not found")])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(source, [("", f"cannot read the spec file: {exc}")]) from None
    if path.suffix.lower() == ".json":
        # PyYAML is YAML 1.1: it rejects tab-indented JSON and reads 1e3 as a string.
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(source, [("", f"not valid JSON: {exc}")]) from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(source, [("", f"not valid YAML: {_yaml_problem(exc)}")]) from None
    if not isinstance(data, dict):
        raise SpecError(source, [("", "the spec must be a mapping of keys to values")])
    data = normalize_keys(data, source=source)
    data.setdefault("name", path.stem)
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None) -> RenderSpec:
    """Load, override and validate a spec file."""
    spec_path = Path(path).resolve()
    data = apply_overrides(read_spec_file(spec_path), overrides or [])
    return validate_spec(data, base_dir=spec_path.parent, source=str(spec_path))


def _is_spec_file(text: str) -> bool:
    return text.endswith(SPEC_SUFFIXES) and not text.startswith(("http://", "https://"))


def source_label(source: RenderSpec | str | Path) -> str:
    """How errors about a spec from ``source`` name it: the spec file's absolute path, else "render options"."""
    if not isinstance(source, RenderSpec) and _is_spec_file(str(source)):
        return str(Path(str(source)).resolve())
    return "render options"


def resolve_spec(
    source: RenderSpec | str | Path,
    output: str | Path | None = None,
    options: dict[str, Any] | None = None,
    sets: list[str] | tuple[str, ...] = (),
) -> RenderSpec:
    """Build a spec from a spec object, a spec file (.yaml/.yml/.json), or a composition URL/file/folder.

    ``options`` are spec keys given in code or as CLI flags; ``sets`` are ``key=value`` overrides.
    """
    data: dict[str, Any]
    text = str(source)
    if isinstance(source, RenderSpec):
        data, base_dir, origin = source.to_json_dict(), Path.cwd(), "render options"
    elif _is_spec_file(text):
        spec_file = Path(text).resolve()
        data, base_dir, origin = read_spec_file(spec_file), spec_file.parent, str(spec_file)
    else:
        data, base_dir, origin = {"composition": text}, Path.cwd(), "render options"
    data = apply_overrides(data | dict(options or {}), list(sets))
    if output is not None:  # an s3:// URI stays a URI; a path is taken from the working directory
        is_uri = isinstance(output, str) and output.startswith("s3://")
        data["output"] = output if is_uri else str(Path(output).resolve())
    return validate_spec(data, base_dir=base_dir, source=origin)
