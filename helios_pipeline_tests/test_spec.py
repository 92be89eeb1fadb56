"""The render spec: YAML/JSON loading, Helios camelCase aliases, paths, overrides, and error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helios_pipeline.spec import RenderSpec, SpecError, apply_overrides, load_spec, sanitize_key, validate_spec

SNAKE = {
    "name": "Promo",
    "composition": "./site",
    "width": 1280,
    "height": 720,
    "fps": 30,
    "duration_in_seconds": 4.1,
    "frame_count": 123,
    "start_frame": 12,
    "mode": "dom",
    "concurrency": 3,
    "video_codec": "libx265",
    "pixel_format": "yuv444p",
    "crf": 20,
    "preset": "fast",
    "video_bitrate": "4M",
    "audio_codec": "aac",
    "audio_bitrate": "128k",
    "audio_tracks": [
        {
            "path": "./music.wav",
            "volume": 0.7,
            "offset": 1.5,
            "seek": 0.25,
            "loop": True,
            "fade_in_duration": 2,
            "fade_out_duration": 3,
            "playback_rate": 1.25,
        },
        "sfx/click.wav",
    ],
    "input_props": {"title": "Hello", "items": [1, 2, 3]},
    "random_seed": 42,
    "intermediate_image_format": "png",
    "intermediate_image_quality": 80,
    "stability_timeout": 5000,
    "output": "./renders/promo.mp4",
}

# The same render written as a Helios RendererOptions object.
CAMEL = {
    "name": "Promo",
    "composition": "./site",
    "width": 1280,
    "height": 720,
    "fps": 30,
    "durationInSeconds": 4.1,
    "frameCount": 123,
    "startFrame": 12,
    "mode": "dom",
    "concurrency": 3,
    "videoCodec": "libx265",
    "pixelFormat": "yuv444p",
    "crf": 20,
    "preset": "fast",
    "videoBitrate": "4M",
    "audioCodec": "aac",
    "audioBitrate": "128k",
    "audioTracks": [
        {
            "path": "./music.wav",
            "volume": 0.7,
            "offset": 1.5,
            "seek": 0.25,
            "loop": True,
            "fadeInDuration": 2,
            "fadeOutDuration": 3,
            "playbackRate": 1.25,
        },
        "sfx/click.wav",
    ],
    "inputProps": {"title": "Hello", "items": [1, 2, 3]},
    "randomSeed": 42,
    "intermediateImageFormat": "png",
    "intermediateImageQuality": 80,
    "stabilityTimeout": 5000,
    "output": "./renders/promo.mp4",
}

MINIMAL = {"composition": "site", "width": 64, "height": 36, "fps": 30, "frame_count": 10}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<!doctype html>", encoding="utf-8")
    (tmp_path / "music.wav").write_bytes(b"RIFF")
    (tmp_path / "sfx").mkdir()
    (tmp_path / "sfx" / "click.wav").write_bytes(b"RIFF")
    return tmp_path


def write_yaml(folder: Path, data: object, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def write_json(folder: Path, data: object, name: str = "spec.json", indent: object = 2) -> Path:
    path = folder / name
    path.write_text(json.dumps(data, indent=indent), encoding="utf-8")
    return path


def spec_error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec(path, overrides)
    return str(caught.value)


# --- loading --------------------------------------------------------------------------------------


def test_yaml_spec_loads_every_field(project: Path) -> None:
    spec = load_spec(write_yaml(project, SNAKE))
    assert spec.name == "promo"
    assert spec.composition == str(project / "site" / "index.html")
    assert (spec.width, spec.height, spec.fps) == (1280, 720, 30)
    assert spec.total_frames == 123
    assert type(spec.total_frames) is int
    assert spec.start_frame == 12
    assert spec.concurrency == 3
    assert (spec.video_codec, spec.pixel_format, spec.crf, spec.preset) == ("libx265", "yuv444p", 20, "fast")
    assert (spec.video_bitrate, spec.audio_codec, spec.audio_bitrate) == ("4M", "aac", "128k")
    first, second = spec.audio_tracks
    assert first.path == project / "music.wav"
    assert (first.volume, first.offset, first.seek, first.loop) == (0.7, 1.5, 0.25, True)
    assert (first.fade_in_duration, first.fade_out_duration, first.playback_rate) == (2, 3, 1.25)
    assert second.path == project / "sfx" / "click.wav"
    assert (second.volume, second.offset, second.loop) == (1.0, 0.0, False)
    assert spec.input_props == {"title": "Hello", "items": [1, 2, 3]}
    assert spec.random_seed == 42
    assert (spec.intermediate_image_format, spec.intermediate_image_quality) == ("png", 80)
    assert spec.stability_timeout == 5000
    assert spec.output_path == project / "renders" / "promo.mp4"
    assert spec.is_local


def test_json_spec_equals_yaml_spec(project: Path) -> None:
    assert load_spec(write_json(project, SNAKE)) == load_spec(write_yaml(project, SNAKE))


def test_json_spec_is_read_as_json(project: Path) -> None:
    """Tab-indented JSON is not YAML, and YAML 1.1 reads the JSON number 1e3 as a string."""
    data = {**MINIMAL, "input_props": {"big": 1e3, "emoji": "\U0001f600"}}
    path = project / "spec.json"
    path.write_text(json.dumps(data, indent="\t"), encoding="utf-8")
    spec = load_spec(path)
    assert spec.input_props == {"big": 1000.0, "emoji": "\U0001f600"}


def test_camel_case_helios_options_equal_snake_case(project: Path) -> None:
    assert load_spec(write_yaml(project, CAMEL, "a.yaml")) == load_spec(write_yaml(project, SNAKE, "a.yml"))
    assert load_spec(write_json(project, CAMEL)) == load_spec(write_yaml(project, SNAKE))


def test_keys_given_in_both_spellings_are_reported(project: Path) -> None:
    message = spec_error(write_yaml(project, {**MINIMAL, "frameCount": 10}))
    assert "spec.yaml" in message
    assert "frame_count" in message and "frameCount" in message
    assert "twice" in message


def test_spec_round_trips_through_its_json_dump(project: Path) -> None:
    spec = load_spec(write_yaml(project, SNAKE))
    assert RenderSpec.model_validate_json(spec.model_dump_json()) == spec
    assert validate_spec(spec.to_json_dict(), base_dir=Path("/"), source="dump") == spec


# --- paths ----------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_spec_folder(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = project / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    nested = project / "specs"
    nested.mkdir()
    data = {
        **MINIMAL,
        "composition": "../site/index.html",
        "audio_tracks": ["../music.wav"],
        "output": "../videos/x.mp4",
    }
    spec = load_spec(write_yaml(nested, data))
    assert spec.composition == str(project / "site" / "index.html")
    assert spec.audio_tracks[0].path == project / "music.wav"
    assert spec.output_path == project / "videos" / "x.mp4"
    # The same file loaded through a relative path.
    assert load_spec(Path("../specs/spec.yaml")) == spec


def test_composition_folder_prefers_index_then_composition_html(project: Path) -> None:
    (project / "site" / "composition.html").write_text("<!doctype html>", encoding="utf-8")
    assert load_spec(write_yaml(project, MINIMAL)).composition == str(project / "site" / "index.html")
    (project / "site" / "index.html").unlink()
    assert load_spec(write_yaml(project, MINIMAL)).composition == str(project / "site" / "composition.html")


def test_composition_may_be_an_http_url(project: Path) -> None:
    remote = load_spec(write_yaml(project, {**MINIMAL, "composition": "https://example.com/comp/?x=1"}))
    assert remote.composition == "https://example.com/comp/?x=1"
    assert not remote.is_local


def test_name_defaults_to_the_file_stem_and_is_sanitised(project: Path) -> None:
    spec = load_spec(write_yaml(project, MINIMAL, "My Promo (v2).yaml"))
    assert spec.name == "my-promo-v2"
    assert spec.output_path == project / "out" / "my-promo-v2.mp4"
    named = load_spec(write_yaml(project, {**MINIMAL, "name": "Été / Launch_2025!"}))
    assert named.name == "ete-launch_2025"
    numeric = load_spec(write_yaml(project, {**MINIMAL, "name": 2025}))
    assert numeric.name == "2025"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("promo", "promo"),
        ("  Big Launch  ", "big-launch"),
        ("a/b\\c", "a-b-c"),
        ("Crème Brûlée", "creme-brulee"),
        ("___", "render"),
        ("", "render"),
    ],
)
def test_sanitize_key(raw: str, key: str) -> None:
    assert sanitize_key(raw) == key
    assert sanitize_key(key) == key


def test_default_output_is_out_name_mp4_beside_the_spec(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project / "site")
    spec = load_spec(write_yaml(project, {**MINIMAL, "name": "teaser"}))
    assert spec.output_path == project / "out" / "teaser.mp4"
    assert not (project / "out").exists()


# --- overrides ------------------------------------------------------------------------------------


def test_overrides_with_dotted_keys_and_yaml_values(project: Path) -> None:
    path = write_yaml(project, {**MINIMAL, "input_props": {"title": "Hello", "keep": 1}})
    spec = load_spec(
        path,
        [
            "input_props.title=Hi",
            "input_props.size.w=1.5",
            "fps=25",
            "concurrency=2",
            "intermediate_image_format=png",
            "audio_tracks=[music.wav]",
            "input_props.flags=[true, null]",
            "crf=null",
        ],
    )
    assert spec.input_props == {"title": "Hi", "keep": 1, "size": {"w": 1.5}, "flags": [True, None]}
    assert spec.fps == 25 and spec.concurrency == 2
    assert spec.intermediate_image_format == "png"
    assert spec.audio_tracks[0].path == project / "music.wav"
    assert spec.crf is None


def test_apply_overrides_does_not_mutate_its_input() -> None:
    data = {"input_props": {"title": "Hello"}}
    merged = apply_overrides(data, ["input_props.title=42", "width=10"])
    assert merged == {"input_props": {"title": 42}, "width": 10}
    assert data == {"input_props": {"title": "Hello"}}


def test_overrides_replace_camel_case_keys(project: Path) -> None:
    data = {key: value for key, value in MINIMAL.items() if key != "frame_count"}
    path = write_yaml(project, {**data, "frameCount": 10, "inputProps": {"a": 1}})
    spec = load_spec(path, ["frame_count=20", "inputProps.b=2", "startFrame=3"])
    assert spec.frame_count == 20
    assert spec.input_props == {"a": 1, "b": 2}
    assert spec.start_frame == 3


def test_overrides_can_index_audio_tracks(project: Path) -> None:
    spec = load_spec(write_yaml(project, {**MINIMAL, "audio_tracks": ["music.wav"]}), ["audio_tracks.0.volume=0.25"])
    assert spec.audio_tracks[0].volume == 0.25


@pytest.mark.parametrize(
    ("override", "field"),
    [("fps", "fps"), ("=3", "=3"), ("width.x=1", "width"), ("input_props=[a", "input_props")],
)
def test_bad_overrides_are_spec_errors(project: Path, override: str, field: str) -> None:
    message = spec_error(write_yaml(project, MINIMAL), [override])
    assert "--set" in message
    assert field in message


def test_override_values_are_validated_with_the_field_name(project: Path) -> None:
    message = spec_error(write_yaml(project, MINIMAL), ["fps=-5"])
    assert "spec.yaml: fps: Input should be greater than 0" in message


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_key_names_the_key(project: Path) -> None:
    message = spec_error(write_yaml(project, {**MINIMAL, "framerate": 30}))
    assert f"{project / 'spec.yaml'}: framerate: unknown key" in message


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"fps": -30}, "fps", "greater than 0"),
        ({"fps": 0}, "fps", "greater than 0"),
        ({"fps": ".inf"}, "fps", "finite"),
        ({"width": 0}, "width", "greater than 0"),
        ({"height": "tall"}, "height", "valid integer"),
        ({"start_frame": -1}, "start_frame", "greater than or equal to 0"),
        ({"concurrency": 0}, "concurrency", "greater than or equal to 1"),
        ({"frames_per_chunk": 0}, "frames_per_chunk", "greater than or equal to 1"),
        ({"frames_per_chunk": 240.5}, "frames_per_chunk", "fractional"),
        ({"frames_per_chunk": "many"}, "frames_per_chunk", "valid integer"),
        ({"video_codec": "copy"}, "video_codec", "needs mode: canvas"),
        ({"web_codecs_preference": "gpu"}, "web_codecs_preference", "'hardware', 'software' or 'disabled'"),
        ({"mode": "svg"}, "mode", "'dom' or 'canvas'"),
        ({"intermediate_image_format": "webp"}, "intermediate_image_format", "'jpeg' or 'png'"),
        ({"composition": "missing.html"}, "composition", "not found"),
        ({"composition": "ftp://example.com/comp/"}, "composition", "unsupported URL scheme 'ftp'"),
        ({"composition": "http:///nohost"}, "composition", "no host"),
        ({"composition": "file:///srv/my%20site/"}, "composition", "path instead: /srv/my site"),
        ({"fps": 0.0001}, "fps", "0.0001 is outside the supported range of 1 to 240 frames per second"),
        ({"fps": 241}, "fps", "outside the supported range of 1 to 240"),
        ({"audio_tracks": ["music.wav", {"path": "nope.wav"}]}, "audio_tracks[1].path", "not found"),
        ({"audio_tracks": [{"path": "music.wav", "volume": -1}]}, "audio_tracks[0].volume", "greater than or equal"),
        ({"audio_tracks": [{"path": "music.wav", "fadeIn": 1}]}, "audio_tracks[0].fadeIn", "unknown key"),
        ({"frame_count": 0}, "frame_count", "greater than 0"),
        ({"frame_count": 12.5}, "frame_count", "fractional"),
        ({"duration_in_seconds": 4.0}, "frame_count", "disagrees"),
        ({"frame_count": None}, "frame_count", "required"),
    ],
)
def test_invalid_spec_names_file_field_and_reason(project: Path, changes: dict, field: str, reason: str) -> None:
    data = {**MINIMAL, **changes}
    data = {key: value for key, value in data.items() if value is not None}
    text = yaml.safe_dump(data, sort_keys=False).replace("'.inf'", ".inf")
    path = project / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    message = spec_error(path)
    line = next(line.strip() for line in message.splitlines() if line.strip().startswith(str(path)))
    assert line.startswith(f"{path}: {field}: "), message
    assert reason in line, message
    assert "(spec)" not in message
    assert "Value error" not in message


def test_missing_audio_file_message_is_readable(project: Path) -> None:
    message = spec_error(write_yaml(project, {**MINIMAL, "audioTracks": [{"path": "gone.wav"}]}))
    assert message.splitlines()[1].strip() == (
        f"{project / 'spec.yaml'}: audio_tracks[0].path: audio file not found: {project / 'gone.wav'}"
    )


def test_camel_case_errors_use_the_snake_case_field_name(project: Path) -> None:
    message = spec_error(write_yaml(project, {**MINIMAL, "startFrame": -2}))
    assert f"{project / 'spec.yaml'}: start_frame: Input should be greater than or equal to 0" in message


def test_duration_and_frame_count_may_agree(project: Path) -> None:
    spec = load_spec(write_yaml(project, {**MINIMAL, "fps": 30, "duration_in_seconds": 4.1, "frame_count": 123}))
    assert spec.total_frames == 123
    with_duration = load_spec(write_yaml(project, {**MINIMAL, "frame_count": None, "duration_in_seconds": 2.5}))
    assert with_duration.frame_count is None
    assert with_duration.total_frames == 75


def test_neither_duration_nor_frame_count_names_both(project: Path) -> None:
    data = {key: value for key, value in MINIMAL.items() if key != "frame_count"}
    message = spec_error(write_yaml(project, data))
    assert "duration_in_seconds" in message and "frame_count" in message
    assert "required" in message


def test_folder_without_an_entry_page(project: Path) -> None:
    (project / "empty").mkdir()
    message = spec_error(write_yaml(project, {**MINIMAL, "composition": "empty"}))
    assert f"{project / 'spec.yaml'}: composition: " in message
    assert "index.html" in message and "composition.html" in message


def test_several_problems_are_all_reported(project: Path) -> None:
    message = spec_error(write_yaml(project, {**MINIMAL, "fps": -1, "width": 0, "bogus": True}))
    for field in ("fps", "width", "bogus"):
        assert f"{project / 'spec.yaml'}: {field}: " in message


def test_malformed_yaml(project: Path) -> None:
    path = project / "spec.yaml"
    path.write_text("width: 10\nheight: [1, 2\nfps: 30\n", encoding="utf-8")
    message = spec_error(path)
    assert str(path) in message
    assert "not valid YAML" in message
    assert "line 3" in message
    assert len(message.splitlines()) == 2, "one readable line per problem"


def test_malformed_json(project: Path) -> None:
    path = project / "spec.json"
    path.write_text('{"width": 10,}', encoding="utf-8")
    message = spec_error(path)
    assert str(path) in message and "not valid JSON" in message and "line 1" in message


@pytest.mark.parametrize("content", ["- composition: site\n- width: 3\n", "just a string\n", "", "42\n"])
def test_spec_must_be_a_mapping(project: Path, content: str) -> None:
    path = project / "spec.yaml"
    path.write_text(content, encoding="utf-8")
    message = spec_error(path)
    assert str(path) in message and "mapping" in message


def test_missing_and_unreadable_spec_files(project: Path) -> None:
    assert "spec file not found" in spec_error(project / "nope.yaml")
    binary = project / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x80garbage")
    assert str(binary) in spec_error(binary)


def test_output_must_not_be_a_folder(project: Path) -> None:
    message = spec_error(write_yaml(project, {**MINIMAL, "output": "site"}))
    assert f"{project / 'spec.yaml'}: output: " in message
    assert "folder" in message


def test_spec_error_keeps_structured_problems(project: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(write_yaml(project, {**MINIMAL, "fps": -1}))
    assert caught.value.source == str(project / "spec.yaml")
    assert caught.value.problems == [("fps", "Input should be greater than 0")]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "canvas", "video_codec": "copy", "intermediate_video_codec": "vp8"},
         "output: a .mp4 file cannot hold vp8 video (the kept WebCodecs stream (vp8)); write a .webm (or .mkv)"),
        ({"video_codec": "libvpx"}, "output: a .mp4 file cannot hold vp8 video (video_codec libvpx); write a .webm"),
        ({"video_codec": "libx264", "output": "out/a.webm"}, "output: a .webm file cannot hold h264 video"),
        ({"video_codec": "prores_ks", "pixel_format": "yuva444p10le"}, "a .mp4 file cannot hold prores video"),
        ({"video_codec": "libvpx-vp9", "output": "out/a.mov"}, "a .mov file cannot hold vp9 video"),
    ],
)  # fmt: skip
def test_an_output_container_that_cannot_hold_the_video_is_refused_before_rendering(
    project: Path, fields: dict, message: str
) -> None:
    error = spec_error(write_yaml(project, {**MINIMAL, **fields}))
    assert message in error and "spec.yaml" in error


@pytest.mark.parametrize(
    "fields",
    [
        {"mode": "canvas", "video_codec": "copy", "intermediate_video_codec": "vp9", "output": "out/a.webm"},
        {"mode": "canvas", "video_codec": "copy", "intermediate_video_codec": "av1", "output": "out/a.mp4"},
        {"video_codec": "libvpx-vp9", "output": "out/a.mkv"},
        {"video_codec": "prores_ks", "output": "out/a.mov"},
        {"video_codec": "mpeg4", "output": "out/a.avi"},  # containers and encoders the table does not know
    ],
)
def test_containers_that_hold_the_video_are_accepted(project: Path, fields: dict) -> None:
    assert load_spec(write_yaml(project, {**MINIMAL, **fields})).output.suffix == Path(fields["output"]).suffix
