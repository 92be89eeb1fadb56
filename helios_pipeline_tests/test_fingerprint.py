"""The render fingerprint (data version) follows pixels and samples only, and every spec field is classified.

The picture fingerprint (the chunks' and the concat's data version) leaves out what only the final mix
reads, so an edit of the sound alone re-runs the mix and no chunk.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helios_pipeline.fingerprint import (
    DERIVED_FIELDS,
    HASHED_FIELDS,
    IGNORED_FIELDS,
    PICTURE_FIELDS,
    SOUND_FIELDS,
    picture_fingerprint,
    render_fingerprint,
)
from helios_pipeline.spec import RenderSpec, validate_spec

BASE = {
    "name": "promo",
    "composition": "site",
    "width": 64,
    "height": 36,
    "fps": 30,
    "frame_count": 60,
    "audio_tracks": [{"path": "music.wav", "volume": 0.5}],
    "subtitles": "captions.srt",
    "output": "out/promo.mp4",
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<!doctype html><p>one</p>", encoding="utf-8")
    (tmp_path / "site" / "style.css").write_text("p { color: red }", encoding="utf-8")
    (tmp_path / "music.wav").write_bytes(b"RIFF-one")
    (tmp_path / "captions.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nHello\n", encoding="utf-8")
    return tmp_path


def spec_of(project: Path, **changes: object) -> RenderSpec:
    """BASE with ``changes`` (a None value removes the key)."""
    data = {key: value for key, value in {**BASE, **changes}.items() if value is not None}
    return validate_spec(data, base_dir=project, source="spec.yaml")


def fingerprint(project: Path, **changes: object) -> str:
    """The fingerprint of BASE with ``changes``."""
    return render_fingerprint(spec_of(project, **changes))


def pictures(project: Path, **changes: object) -> str:
    """The picture fingerprint of BASE with ``changes``."""
    return picture_fingerprint(spec_of(project, **changes))


def test_every_spec_field_is_classified_exactly_once() -> None:
    """A new RenderSpec field fails here until someone decides whether it changes the output."""
    classified = [*HASHED_FIELDS, *DERIVED_FIELDS, *IGNORED_FIELDS]
    assert len(classified) == len(set(classified)), "a field is in two classes"
    fields = set(RenderSpec.model_fields)
    assert fields - set(classified) == set(), "unclassified spec fields: add them to a set in fingerprint.py"
    assert set(classified) - fields == set(), "classified names that are not spec fields"


def test_every_fingerprinted_field_is_read_by_the_pictures_or_by_the_mix() -> None:
    assert PICTURE_FIELDS | SOUND_FIELDS == HASHED_FIELDS | DERIVED_FIELDS
    assert not PICTURE_FIELDS & SOUND_FIELDS, "a field read by both stages"


@pytest.mark.parametrize(
    "changes",
    [
        {"schedule": "0 6 * * *"},
        {"schedule": "*/5 * * * *", "timezone": "Europe/Paris"},
        {"concurrency": 7},
        {"frames_per_chunk": 12},
        {"worker": {"cpu": 1024, "memory": 4096}},
        {"name": "renamed"},
        {"stability_timeout": 1000},
        {"poster_frame": "1s"},  # a still beside the video, nothing in it
        {"output": "elsewhere/other-name.mp4"},
        {"frame_count": None, "duration_in_seconds": 2},  # the same 60 frames, spelled as a duration
        {"composition": "site/index.html"},  # the same entry page, named directly
    ],
    ids=lambda changes: ",".join(changes),
)
def test_edits_that_change_no_pixel_or_sample_keep_the_fingerprint(project: Path, changes: dict) -> None:
    assert fingerprint(project, **changes) == fingerprint(project)


@pytest.mark.parametrize(
    "changes",
    [
        {"width": 66},
        {"fps": 25},
        {"frame_count": 61},
        {"start_frame": 3},
        {"crf": 30},
        {"pixel_format": "yuv444p"},
        {"input_props": {"title": "Hi"}},
        {"random_seed": 7},
        {"mode": "canvas"},
        {"intermediate_image_format": "png"},
        {"audio_tracks": [{"path": "music.wav", "volume": 0.6}]},
        {"audio_tracks": []},
        {"output": "out/promo.mkv"},  # another container: .webm would even mix Opus, not AAC
    ],
    ids=lambda changes: ",".join(changes),
)
def test_edits_that_change_pixels_or_samples_change_the_fingerprint(project: Path, changes: dict) -> None:
    assert fingerprint(project, **changes) != fingerprint(project)


@pytest.mark.parametrize("file", ["site/index.html", "site/style.css", "music.wav", "captions.srt"])
def test_an_edited_input_file_changes_the_fingerprint(project: Path, file: str) -> None:
    before = fingerprint(project)
    path = project / file
    path.write_bytes(path.read_bytes().replace(b"1", b"2").replace(b"one", b"two").replace(b"red", b"blue"))
    assert fingerprint(project) != before


def test_a_moved_project_keeps_its_fingerprint(project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    moved = tmp_path_factory.mktemp("moved") / "project"
    shutil.copytree(project, moved)
    assert fingerprint(moved) == fingerprint(project)


SOUND_EDITS = [
    {"audio_tracks": [{"path": "music.wav", "volume": 0.6}]},
    {"audio_tracks": [{"path": "music.wav", "volume": 0.5, "offset": 1.5}]},
    {"audio_tracks": [{"path": "other.wav", "volume": 0.5}]},  # another file, other bytes
    {"audio_tracks": []},
    {"audio_codec": "libopus"},
    {"audio_bitrate": "96k"},
    {"output": "out/promo.mkv"},
]


@pytest.mark.parametrize("changes", SOUND_EDITS, ids=lambda changes: ",".join(f"{k}={v}" for k, v in changes.items()))
def test_an_edit_of_the_sound_alone_keeps_the_pictures(project: Path, changes: dict) -> None:
    """The chunks carry the page's own audio as PCM: the spec's tracks, audio codec and container are the mix's."""
    (project / "other.wav").write_bytes(b"RIFF-other")
    assert pictures(project, **changes) == pictures(project)
    assert fingerprint(project, **changes) != fingerprint(project)


@pytest.mark.parametrize(
    "changes",
    [{"width": 66}, {"fps": 25}, {"frame_count": 61}, {"crf": 30}, {"input_props": {"t": "Hi"}}, {"subtitles": None}],
    ids=lambda changes: ",".join(changes),
)
def test_an_edit_of_the_pictures_changes_the_picture_fingerprint(project: Path, changes: dict) -> None:
    assert pictures(project, **changes) != pictures(project)


@pytest.mark.parametrize("file", ["site/index.html", "site/style.css", "captions.srt"])
def test_an_edited_composition_or_subtitle_file_changes_the_pictures(project: Path, file: str) -> None:
    """The page's own <audio>/<video> sources live in the composition folder: they count as pictures."""
    before = pictures(project)
    path = project / file
    path.write_bytes(path.read_bytes().replace(b"one", b"two").replace(b"red", b"blue").replace(b"Hello", b"Bye"))
    assert pictures(project) != before


def test_an_edited_audio_track_file_keeps_the_pictures(project: Path) -> None:
    before, whole = pictures(project), fingerprint(project)
    (project / "music.wav").write_bytes(b"RIFF-two")
    assert pictures(project) == before
    assert fingerprint(project) != whole
