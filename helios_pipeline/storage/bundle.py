"""Composition bundles: a local composition, its audio tracks and subtitles packed once, content-addressed.

At registration the files a render reads are packed into ``bundles/<fingerprint>.tar.gz``, so a
worker needs nothing from the machine that submitted the render. A worker fetches the bundle
(verified by size and SHA-256), unpacks it once into its cache, and every chunk of the render on
that machine reuses it. The spec's paths are then rewritten to point into the unpacked folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helios_pipeline.files import composition_files
from helios_pipeline.storage.location import cache_root
from helios_pipeline.storage.store import ObjectInfo, Store

COMPLETE_MARK = ".helios-bundle-complete"


@dataclass(frozen=True)
class BundleRef:
    """Where a render's bundle is stored and what it must hash to, plus where each input sits inside it."""

    key: str
    info: ObjectInfo
    composition: str
    audio_tracks: tuple[str, ...]
    subtitles: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "info": self.info.to_dict(),
            "composition": self.composition,
            "audio_tracks": list(self.audio_tracks),
            "subtitles": self.subtitles,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleRef:
        return cls(
            key=data["key"],
            info=ObjectInfo(**data["info"]),
            composition=data["composition"],
            audio_tracks=tuple(data["audio_tracks"]),
            subtitles=data.get("subtitles"),
        )


def bundle_key(fingerprint: str) -> str:
    return f"bundles/{fingerprint}.tar.gz"


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Same bytes in, same archive out: no owners or times in the bundle."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def pack_bundle(spec_data: dict[str, Any], archive: Path) -> dict[str, Any]:
    """Pack the files of a validated local spec (as ``to_json_dict``) into ``archive``; return the layout."""
    composition = Path(spec_data["composition"])
    root = composition.parent
    tracks = [Path(track["path"]) for track in spec_data.get("audio_tracks", [])]
    subtitles = Path(spec_data["subtitles"]) if spec_data.get("subtitles") else None
    layout = {
        "composition": f"composition/{composition.relative_to(root).as_posix()}",
        "audio_tracks": [f"audio/{index}/{track.name}" for index, track in enumerate(tracks)],
        "subtitles": f"subtitles/{subtitles.name}" if subtitles else None,
    }
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
        for path in composition_files(root):
            tar.add(path, arcname=f"composition/{path.relative_to(root).as_posix()}", filter=_normalised)
        for track, name in zip(tracks, layout["audio_tracks"], strict=True):
            tar.add(track, arcname=name, filter=_normalised)
        if subtitles is not None:
            tar.add(subtitles, arcname=layout["subtitles"], filter=_normalised)
    return layout


def rewrite_paths(spec_data: dict[str, Any], bundle: BundleRef, folder: Path) -> dict[str, Any]:
    """The spec with its composition, audio and subtitle paths pointing into the unpacked bundle."""
    data = dict(spec_data)
    data["composition"] = str(folder / bundle.composition)
    data["audio_tracks"] = [
        {**track, "path": str(folder / inside)}
        for track, inside in zip(spec_data.get("audio_tracks", []), bundle.audio_tracks, strict=True)
    ]
    if bundle.subtitles is not None:
        data["subtitles"] = str(folder / bundle.subtitles)
    return data


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """One unpacker per bundle on a machine: chunks of the same render start side by side."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def unpacked_bundle(store: Store, bundle: BundleRef) -> Path:
    """The bundle's folder in this machine's cache, fetched and unpacked on first use."""
    name = Path(bundle.key).name.removesuffix(".tar.gz")
    bundles = cache_root() / "bundles"
    folder = bundles / name
    if (folder / COMPLETE_MARK).is_file():
        return folder
    with _locked(bundles / f".{name}.lock"):
        if (folder / COMPLETE_MARK).is_file():
            return folder
        archive = bundles / f".{name}.tar.gz"
        staging = bundles / f".{name}.unpacking-{os.getpid()}"
        try:
            store.fetch(bundle.key, archive, bundle.info)
            shutil.rmtree(staging, ignore_errors=True)
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(staging, filter="data")  # no absolute paths, links out or device files
            (staging / COMPLETE_MARK).touch()
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
        finally:
            archive.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
    return folder
