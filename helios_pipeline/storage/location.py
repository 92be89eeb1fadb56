"""Parse a storage location: a local folder, or ``s3://bucket/prefix``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# S3's own bucket naming rules, so a typo fails here with the reason instead of in some request later
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class StorageLocation:
    """A parsed location: ``bucket`` is set for S3, ``path`` for a local folder."""

    raw: str
    bucket: str | None = None
    prefix: str = ""
    path: Path | None = None

    @property
    def is_remote(self) -> bool:
        return self.bucket is not None


def split_s3_uri(uri: str, *, what: str = "S3 location") -> tuple[str, str]:
    """``s3://bucket/some/key`` -> (bucket, "some/key"), with an error that names the URI and the reason."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{what} {uri!r} must start with s3://")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(f"{what} {uri!r}: {bucket!r} is not a valid bucket name (3-63 characters: a-z, 0-9, '.', '-')")
    return bucket, key.strip("/")


def parse_location(raw: str) -> StorageLocation:
    """``HELIOS_STORAGE``: ``s3://bucket/prefix`` selects S3; anything else is a local folder."""
    if raw.startswith("s3://"):
        bucket, prefix = split_s3_uri(raw, what="HELIOS_STORAGE")
        return StorageLocation(raw=raw, bucket=bucket, prefix=prefix)
    if "://" in raw:
        raise ValueError(f"HELIOS_STORAGE {raw!r}: only local folders and s3:// locations are supported")
    return StorageLocation(raw=raw, path=Path(raw).expanduser().resolve())


def cache_root() -> Path:
    """This machine's cache for downloaded chunks and unpacked bundles (HELIOS_CACHE, else XDG's cache)."""
    configured = os.environ.get("HELIOS_CACHE")
    if configured:
        return Path(configured).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "helios_pipeline"
