"""A content fingerprint of a render: the spec plus every file its composition and audio read.

Used as a data version, so a changed composition shows as stale and an unchanged one is not
rendered again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from helios_pipeline.spec import RenderSpec

SKIPPED_DIRS = {"out", "node_modules", "__pycache__"}
ENGINE_VERSION = "2"  # bump when the engine's output for the same input changes


def _composition_files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") or part in SKIPPED_DIRS for part in relative.parts[:-1]):
            continue
        if path.is_file() and not path.name.startswith("."):
            files.append(path)
    # installed packages count by their manifests, not by every file they ship
    files += sorted(root.glob("node_modules/**/package.json"))
    return files


def _hash_file(digest: hashlib._Hash, path: Path) -> None:
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def render_fingerprint(spec: RenderSpec) -> str:
    """A short hex digest of what determines the rendered pictures and sound."""
    digest = hashlib.sha256(ENGINE_VERSION.encode())
    identity = spec.to_json_dict()
    for key in ("name", "output", "concurrency"):
        identity.pop(key, None)
    digest.update(json.dumps(identity, sort_keys=True).encode())
    if spec.is_local:
        root = Path(spec.composition).parent
        for path in _composition_files(root):
            digest.update(str(path.relative_to(root)).encode())
            _hash_file(digest, path)
    for track in spec.audio_tracks:
        _hash_file(digest, track.path)
    if spec.subtitles is not None:
        _hash_file(digest, Path(spec.subtitles))
    return digest.hexdigest()[:16]
