"""Checks made before anything renders, so bad input fails fast with exit code 2 and nothing written.

The spec's own validation knows the schema and the codecs; this adds what needs the outside world:
the deployment's limits (environment settings), ffprobe on every audio track, and (for the CLI
and the library) the composition URL. Above the engine (it runs ffprobe), below the orchestrators:
the CLI, the library orchestrator and Dagster's registration (``dagster_defs/registry.py``: CLI
submits, the inbox sensor, schedules and renders added in the UI) all call :func:`check_inputs`.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from helios_pipeline.engine.audio.mix import output_audio_codec
from helios_pipeline.engine.capture_setting import dom_capture_choice
from helios_pipeline.engine.errors import RenderError, ToolNotFoundError
from helios_pipeline.engine.ffmpeg import encoder_kinds, encoder_pixel_formats
from helios_pipeline.engine.probe import audio_stream_duration
from helios_pipeline.limits import RenderLimits, SettingError
from helios_pipeline.network import read_deployment_policy
from helios_pipeline.spec import RenderSpec, SpecError

URL_TIMEOUT_SECONDS = 15


def check_composition_reachable(url: str) -> None:
    """Fetch ``url`` once; an unreachable host or an HTTP error is invalid input."""
    request = urllib.request.Request(url, method="GET", headers={"User-Agent": "helios-pipeline"})
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT_SECONDS) as response:
            response.read(1)
    except urllib.error.HTTPError as exc:
        raise SpecError(url, [("composition", f"HTTP {exc.code} {exc.reason}")]) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SpecError(url, [("composition", f"unreachable: {reason}")]) from None
    except (http.client.HTTPException, ValueError) as exc:  # InvalidURL, a malformed response
        raise SpecError(url, [("composition", f"cannot load: {type(exc).__name__}: {exc}")]) from None


def audio_track_problems(spec: RenderSpec) -> list[tuple[str, str]]:
    """(field, reason) for every audio track ffprobe cannot read or that holds no audio stream.

    Without this, a track that is not audio fails the final mix, after every chunk was rendered.
    """
    problems = []
    for index, track in enumerate(spec.audio_tracks):
        field = f"audio_tracks[{index}].path"
        try:
            has_audio, _ = audio_stream_duration(track.path, "not audio FFmpeg can read")
        except ToolNotFoundError:
            raise
        except RenderError as exc:
            problems.append((field, str(exc).replace("\n", " | ")))
            continue
        if not has_audio:
            problems.append((field, f"{track.path} has no audio stream"))
    return problems


_KINDS = {"V": "a video", "A": "an audio", "S": "a subtitle"}


def _not_an_encoder(name: str, wanted: str) -> str | None:
    kind = encoder_kinds().get(name)
    if kind == wanted:
        return None
    what = f"is {_KINDS[kind]} encoder" if kind else "is not an encoder this FFmpeg has"
    return f"{name} {what}; give {_KINDS[wanted]} encoder (`ffmpeg -encoders` lists them)"


def encoder_problems(spec: RenderSpec) -> list[tuple[str, str]]:
    """(field, reason) when this FFmpeg lacks the spec's encoders or the video encoder not its pixel format.

    The two FFmpeg questions (its encoders, the video encoder's pixel formats) are asked at once: each is
    an FFmpeg start (~0.1 s) on the way to every render's first frame.
    """
    problems = []
    if spec.video_codec != "copy":
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ffmpeg-formats") as pool:
            pixel_formats = pool.submit(encoder_pixel_formats, spec.video_codec)
            problem = _not_an_encoder(spec.video_codec, "V")
            formats = pixel_formats.result()
        if problem:
            problems.append(("video_codec", problem))
        elif formats and spec.pixel_format not in formats:
            problems.append(("pixel_format", f"{spec.video_codec} cannot encode {spec.pixel_format}; it takes "
                             f"{', '.join(formats)}"))  # fmt: skip
    audio_codec = output_audio_codec(spec.audio_codec, spec.output_path)
    if problem := _not_an_encoder(audio_codec, "A"):
        problems.append(("audio_codec", problem))
    return problems


def check_inputs(spec: RenderSpec, source: str = "render options", *, fetch_composition: bool = True) -> None:
    """Everything about the input that can be known before a browser starts; raises :class:`SpecError`
    naming ``source`` and each field. ``fetch_composition`` also loads a composition URL once."""
    try:
        read_deployment_policy()
    except ValueError as exc:  # the deployment's setting, not the spec: every render would fail on it
        raise SettingError(str(exc)) from None
    try:
        dom_capture_choice()  # HELIOS_DOM_CAPTURE: refused here, not by every chunk after its worker started
    except RenderError as exc:
        raise SettingError(str(exc)) from None
    problems = RenderLimits.from_env().problems(spec) + encoder_problems(spec) + audio_track_problems(spec)
    if problems:
        raise SpecError(source, problems)
    if fetch_composition and not spec.is_local:
        check_composition_reachable(spec.composition)
