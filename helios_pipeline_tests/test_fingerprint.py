"""The render fingerprint (data version) follows pixels and samples only, and every spec field is classified."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helios_pipeline.fingerprint import DERIVED_FIELDS, HASHED_FIELDS, IGNORED_FIELDS, render_fingerprint
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


def fingerprint(project: Path, **changes: object) -> str:
    """The fingerprint of BASE with ``changes`` (a None value removes the key)."""
    data = {key: value for key, value in {**BASE, **changes}.items() if value is not None}
    return render_fingerprint(validate_spec(data, base_dir=project, source="spec.yaml"))


def test_every_spec_field_is_classified_exactly_once() -> None:
    """A new RenderSpec field fails here until someone decides whether it changes the output."""
    classified = [*HASHED_FIELDS, *DERIVED_FIELDS, *IGNORED_FIELDS]
    assert len(classified) == len(set(classified)), "a field is in two classes"
    fields = set(RenderSpec.model_fields)
    assert fields - set(classified) == set(), "unclassified spec fields: add them to a set in fingerprint.py"
    assert set(classified) - fields == set(), "classified names that are not spec fields"


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
