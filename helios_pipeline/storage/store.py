"""The storage interface: keys (``renders/<key>/chunk_0000.mov``) mapped to bytes, local or remote.

A chunk run renders into a local folder (``work_dir``) and ``publish``es the file under its key;
a concat run ``fetch``es the chunks into its own local folder, checking each against the size and
SHA-256 recorded when it was published. With a local store the folder *is* the storage, so
publishing and fetching only verify; with S3 they upload and download.
"""

from __future__ import annotations

import errno
import hashlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from helios_pipeline.disk_full import DiskFull, is_no_space, no_space_message
from helios_pipeline.files import hash_file
from helios_pipeline.storage.location import StorageLocation, parse_location


class StorageError(RuntimeError):
    """A storage call failed; the message names the location or key and the reason."""


class StorageFullError(StorageError, DiskFull):
    """A file could not be written because the storage's (or this machine's) volume is full."""


def write_error(exc: OSError, path: Path) -> StorageError:
    """The storage error for a failed write of ``path``: a full volume says so, with the path."""
    if is_no_space(exc):
        return StorageFullError(no_space_message(path, exc.errno or errno.ENOSPC))
    return StorageError(f"could not write {path}: {exc.strerror or exc}")


@dataclass(frozen=True)
class ObjectInfo:
    """What identifies a stored file's content: its size and SHA-256."""

    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_info(path: Path) -> ObjectInfo:
    digest = hashlib.sha256()
    hash_file(digest, path)
    return ObjectInfo(size=path.stat().st_size, sha256=digest.hexdigest())


def check_info(what: str, actual: ObjectInfo, expected: ObjectInfo | None) -> None:
    """Refuse a file whose size or checksum is not the one recorded when it was written."""
    if expected is None:
        return
    if actual.size != expected.size:
        raise StorageError(f"{what}: {actual.size} bytes, but {expected.size} were recorded when it was written")
    if actual.sha256 != expected.sha256:
        raise StorageError(
            f"{what}: SHA-256 {actual.sha256[:12]}…, but {expected.sha256[:12]}… was recorded when it was written"
        )


class Store(ABC):
    """Keys are POSIX paths relative to the storage root; every write is atomic."""

    location: StorageLocation

    @property
    def is_remote(self) -> bool:
        return self.location.is_remote

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where ``key`` lives, for people and metadata (a path or an ``s3://`` URI)."""

    @abstractmethod
    def work_dir(self, render_key: str) -> Path:
        """The local folder a render's files are written to and read from on this machine."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """The object's content, or None when there is no such object."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def publish(self, local: Path, key: str) -> ObjectInfo:
        """Make the complete local file ``local`` the object ``key`` (upload when remote)."""

    @abstractmethod
    def fetch(self, key: str, local: Path, expected: ObjectInfo | None = None) -> ObjectInfo:
        """Make ``local`` hold object ``key``, verified against ``expected`` when given."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (recursively)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix``; returns how many were removed."""

    def check(self) -> None:  # noqa: B027 - optional: only remote stores have something to check
        """Fail early, with the reason, when the storage cannot be used (missing bucket, bad credentials)."""


def open_store(location: str | StorageLocation, s3_client: Any | None = None) -> Store:
    """A store for ``location``; ``s3_client`` (boto3) is made from boto3's own configuration when not given."""
    parsed = parse_location(location) if isinstance(location, str) else location
    if parsed.is_remote:
        from helios_pipeline.storage.s3 import S3Store

        return S3Store(parsed, s3_client)
    from helios_pipeline.storage.local import LocalStore

    return LocalStore(parsed)
