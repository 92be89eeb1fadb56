"""The local-folder store: today's one-machine layout, where the work folder is the storage itself."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from helios_pipeline.storage.location import StorageLocation
from helios_pipeline.storage.store import ObjectInfo, StorageError, Store, check_info, file_info, write_error


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failed write of ``path`` (a full disk, above all) into a StorageError that names it."""
    try:
        yield
    except OSError as exc:
        raise write_error(exc, path) from None


class LocalStore(Store):
    def __init__(self, location: StorageLocation):
        assert location.path is not None
        self.location = location
        self.root = location.path

    def path(self, key: str) -> Path:
        return self.root / key

    def uri(self, key: str) -> str:
        return str(self.path(key))

    def work_dir(self, render_key: str) -> Path:
        return self.root / "renders" / render_key

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        with _writing(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
            try:
                with os.fdopen(handle, "wb") as stream:
                    stream.write(data)
                os.replace(temp, target)
            finally:
                Path(temp).unlink(missing_ok=True)

    def publish(self, local: Path, key: str) -> ObjectInfo:
        target = self.path(key)
        if local.resolve() != target.resolve():
            with _writing(target):
                target.parent.mkdir(parents=True, exist_ok=True)
                temp = target.with_name(f".{target.name}.publishing-{os.getpid()}")
                try:
                    shutil.copyfile(local, temp)
                    os.replace(temp, target)
                finally:
                    temp.unlink(missing_ok=True)
        return file_info(target)

    def fetch(self, key: str, local: Path, expected: ObjectInfo | None = None) -> ObjectInfo:
        source = self.path(key)
        if not source.is_file():
            raise StorageError(f"{source}: no such file")
        info = file_info(source)
        check_info(str(source), info, expected)
        if local.resolve() != source.resolve():
            with _writing(local):
                local.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copyfile(source, local)
                except BaseException:
                    local.unlink(missing_ok=True)  # never a half-copied chunk under its own name
                    raise
        return info

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(str(path.relative_to(self.root).as_posix()) for path in base.rglob("*") if path.is_file())

    def delete_prefix(self, prefix: str) -> int:
        base = self.path(prefix)
        if base.is_file():
            base.unlink()
            return 1
        if not base.is_dir():
            return 0
        count = sum(1 for path in base.rglob("*") if path.is_file())
        shutil.rmtree(base, ignore_errors=True)
        return count
