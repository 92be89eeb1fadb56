"""Files of a local composition, and hashing them: shared by the fingerprint and the storage bundles.

The fingerprint and the bundle must agree on what belongs to a composition, or a bundle keyed by
the fingerprint could ship other files than the ones that were hashed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SKIPPED_DIRS = {"out", "__pycache__"}
PACKAGES_DIR = "node_modules"


def composition_files(root: Path, *, packages: bool = True) -> list[Path]:
    """The files a local composition's page may load: its folder without hidden files and output folders.

    ``packages=False`` counts installed packages (node_modules) by their manifests only: the fingerprint
    hashes those, while a bundle must ship every file.
    """
    pruned = SKIPPED_DIRS if packages else SKIPPED_DIRS | {PACKAGES_DIR}
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") or part in pruned for part in relative.parts[:-1]):
            continue
        if path.is_file() and not path.name.startswith("."):
            files.append(path)
    if not packages:
        files += sorted(root.glob(f"{PACKAGES_DIR}/**/package.json"))
    return files


def hash_file(digest: hashlib._Hash, path: Path) -> None:
    """Feed ``path`` into ``digest`` in 1 MiB blocks (videos and bundles do not fit in memory)."""
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
