"""The storage resource: a render's files in a local folder or under an S3 prefix (``HELIOS_STORAGE``).

Layout under the root (local folder, or ``s3://bucket/prefix``): ``renders/<key>/spec.json`` (the
spec snapshot taken at registration), ``registration.json`` (the content fingerprints and, for S3,
the composition bundle), ``chunk_0000.mov``…, ``concat.mov``, ``progress/<chunk>.json``;
``bundles/<fingerprint>.tar.gz``; ``retention/<key>.json``. Every object is written whole or not
at all. A run works in a local folder (``render_dir``): the storage folder itself when local, this
machine's cache when remote, and ``publish``/``fetch`` move files between the two.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from helios_pipeline.fingerprint import combined_fingerprint, picture_fingerprint, sound_fingerprint
from helios_pipeline.plan import RenderPlan, plan
from helios_pipeline.spec import RenderSpec, SpecError
from helios_pipeline.storage import ObjectInfo, StorageError, Store, open_store
from helios_pipeline.storage.bundle import BundleRef, bundle_key, pack_bundle, rewrite_paths, unpacked_bundle

FOREVER = "forever"


def _s3_client() -> Any:
    """dagster-aws's S3 client, configured by boto3's own settings (AWS_* variables, profiles, roles).

    A nested ``S3Resource`` field would make this resource a generator to Dagster (sensors and
    tests would need a context manager to reach it), and boto3 already reads every setting the
    deployment needs, so none is duplicated here. Imported here, not at the top: dagster-aws brings
    boto3 and its own components (about a second of import), which only an S3 deployment's run
    workers should pay for at start-up.
    """
    from dagster_aws.s3 import S3Resource

    return S3Resource().get_client()


def _kept(name: str) -> bool:
    """Files of a finished render that retention leaves: the spec snapshot, its registration, the concat."""
    return name in ("spec.json", "registration.json") or name.startswith("concat.")


def _fingerprints(spec: RenderSpec) -> dict[str, str]:
    """The finished video's fingerprint and the one of its pictures (what the chunks and the concat follow)."""
    picture = picture_fingerprint(spec)
    return {"fingerprint": combined_fingerprint(picture, sound_fingerprint(spec)), "picture_fingerprint": picture}


class RenderStorage(dg.ConfigurableResource):
    """Render files laid out per render and chunk under ``location`` (a folder or ``s3://bucket/prefix``)."""

    location: str
    keep_days: str = "0"
    """How long a finished render's chunks and bundle are kept: 0 = removed once the final video has
    passed its check, N = N days, ``forever`` = never removed by the pipeline. The concat stays (see
    ``remove_render_files``)."""

    _store: Store | None = PrivateAttr(default=None)

    # --- where things are ------------------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            client = _s3_client() if self.location.startswith("s3://") else None
            self._store = open_store(self.location, client)
        return self._store

    def s3_client(self) -> Any:
        """A boto3 S3 client (for s3:// outputs, which may be in another bucket than the storage)."""
        store = self.store
        return getattr(store, "client", None) or _s3_client()

    @property
    def is_remote(self) -> bool:
        return self.store.is_remote

    @property
    def root(self) -> Path:
        """The local storage folder (local storage only)."""
        path = self.store.location.path
        if path is None:
            raise ValueError(f"{self.location} is not a local folder")
        return path

    def render_dir(self, render_key: str) -> Path:
        """This machine's folder for the render's files (the storage itself when it is local)."""
        return self.store.work_dir(render_key)

    def key_of(self, render_key: str, local: Path) -> str:
        """The storage key of a file in ``render_dir(render_key)``."""
        return f"renders/{render_key}/{Path(local).relative_to(self.render_dir(render_key)).as_posix()}"

    def uri_of(self, render_key: str, local: Path) -> str:
        return self.store.uri(self.key_of(render_key, local))

    def spec_file(self, render_key: str) -> str:
        return self.store.uri(f"renders/{render_key}/spec.json")

    # --- registration ----------------------------------------------------------------------------------------
    def save_spec(self, render_key: str, spec: RenderSpec) -> str:
        """Snapshot the spec a render was registered with, and (for S3) bundle its local files.

        The registration (fingerprint, bundle) is written before the spec: a spec that is there is
        always complete.
        """
        data = spec.to_json_dict()
        registration: dict[str, Any] = _fingerprints(spec)
        fingerprint = registration["fingerprint"]
        bundle = self._bundle(render_key, data, fingerprint) if self.is_remote and spec.is_local else None
        registration["bundle"] = bundle.to_dict() if bundle else None
        self.store.write_bytes(f"renders/{render_key}/registration.json", json.dumps(registration).encode())
        self.store.write_bytes(f"renders/{render_key}/spec.json", json.dumps(data, indent=2, sort_keys=True).encode())
        return self.spec_file(render_key)

    def _bundle(self, render_key: str, data: dict[str, Any], fingerprint: str) -> BundleRef:
        """Pack the composition once per content (the bundle is keyed by the fingerprint) and upload it."""
        key = bundle_key(fingerprint)
        with tempfile.TemporaryDirectory(prefix="helios-bundle-") as scratch:
            archive = Path(scratch) / "bundle.tar.gz"
            layout = pack_bundle(data, archive)
            existing = self.store.read_bytes(f"{key}.json")
            if existing is not None:
                info = ObjectInfo(**json.loads(existing))
            else:
                info = self.store.publish(archive, key)
                self.store.write_bytes(f"{key}.json", json.dumps(info.to_dict()).encode())
        self.store.write_bytes(f"{key}.refs/{render_key}", b"")  # who uses it: retention removes it after the last
        return BundleRef(
            key=key,
            info=info,
            composition=layout["composition"],
            audio_tracks=tuple(layout["audio_tracks"]),
            subtitles=layout["subtitles"],
        )

    def registered_as(self, render_key: str, spec: RenderSpec) -> bool:
        """Whether render ``render_key`` is registered with what ``spec`` makes: the same content (composition,
        files, settings: the fingerprint) to the same output."""
        raw = self.store.read_bytes(f"renders/{render_key}/spec.json")
        if raw is None or self.registration(render_key).get("fingerprint") != _fingerprints(spec)["fingerprint"]:
            return False
        return json.loads(raw).get("output") == spec.to_json_dict().get("output")

    def has_spec(self, render_key: str) -> bool:
        return self.store.exists(f"renders/{render_key}/spec.json")

    def registration(self, render_key: str) -> dict[str, Any]:
        raw = self.store.read_bytes(f"renders/{render_key}/registration.json")
        return json.loads(raw) if raw else {}

    def load_spec(self, render_key: str) -> RenderSpec:
        """The registered spec; with a bundle, its paths point into this machine's unpacked copy."""
        raw = self.store.read_bytes(f"renders/{render_key}/spec.json")
        if raw is None:
            raise SpecError(
                self.spec_file(render_key),
                [("", f"no spec registered for render {render_key!r}: drop a spec into the inbox or use "
                      "`helios-pipeline submit SPEC`")],
            )  # fmt: skip
        data = json.loads(raw)
        bundle = self.registration(render_key).get("bundle")
        if bundle:
            ref = BundleRef.from_dict(bundle)
            try:
                data = rewrite_paths(data, ref, unpacked_bundle(self.store, ref))
            except StorageError as exc:
                raise StorageError(f"render {render_key}: composition bundle: {exc}") from None
        return RenderSpec.model_validate_json(json.dumps(data))

    def fingerprint(self, render_key: str, spec: RenderSpec | None = None) -> str:
        """The finished video's content fingerprint, recorded at registration (computed for an older one)."""
        return self._recorded(render_key, spec)["fingerprint"]

    def picture_fingerprint(self, render_key: str, spec: RenderSpec | None = None) -> str:
        """What the render's chunks and concat are made from, recorded at registration: see ``PICTURE_FIELDS``."""
        return self._recorded(render_key, spec)["picture_fingerprint"]

    def _recorded(self, render_key: str, spec: RenderSpec | None) -> dict[str, str]:
        registration = self.registration(render_key)
        if registration.get("fingerprint") and registration.get("picture_fingerprint"):
            return registration
        return _fingerprints(spec or self.load_spec(render_key))  # registered before the picture fingerprint

    def refresh_fingerprint(self, render_key: str, spec: RenderSpec) -> dict[str, str]:
        """Re-hash an unbundled local composition (its files may have changed since registration).

        Returns the fingerprints as recorded now: ``fingerprint`` (the finished video's) and
        ``picture_fingerprint`` (the chunks' and the concat's).
        """
        registration = self.registration(render_key)
        if registration.get("bundle"):
            return self._recorded(render_key, spec)
        fingerprints = _fingerprints(spec)
        if any(registration.get(name) != value for name, value in fingerprints.items()):
            registration.update(fingerprints)
            self.store.write_bytes(f"renders/{render_key}/registration.json", json.dumps(registration).encode())
        return fingerprints

    def plan_for(self, render_key: str) -> RenderPlan:
        """The render's plan, with chunk and concat files in this machine's folder for the render."""
        return plan(self.load_spec(render_key), work_dir=self.render_dir(render_key))

    # --- files -----------------------------------------------------------------------------------------------
    def publish(self, render_key: str, local: Path) -> ObjectInfo:
        return self.store.publish(local, self.key_of(render_key, local))

    def has_file(self, render_key: str, local: Path) -> bool:
        """Whether the storage holds the render's file ``local`` (retention or a lifecycle rule may have removed it)."""
        return self.store.exists(self.key_of(render_key, local))

    def fetch(self, render_key: str, local: Path, expected: ObjectInfo | None = None) -> ObjectInfo:
        return self.store.fetch(self.key_of(render_key, local), local, expected)

    # --- progress (read by the CLI while it follows a render) ---------------------------------------------------
    def write_progress(self, render_key: str, chunk: int, frames: int, of: int) -> None:
        payload = json.dumps({"frames": frames, "of": of}).encode()
        self.store.write_bytes(f"renders/{render_key}/progress/{chunk:03d}.json", payload)

    def frames_done(self, render_key: str) -> int:
        total = 0
        for key in self.store.list(f"renders/{render_key}/progress/"):
            try:
                total += int(json.loads(self.store.read_bytes(key) or b"{}")["frames"])
            except (ValueError, KeyError, StorageError):
                continue
        return total

    # --- retention -------------------------------------------------------------------------------------------
    @property
    def _keep_seconds(self) -> float | None:
        if self.keep_days.strip().lower() == FOREVER:
            return None
        try:
            days = float(self.keep_days)
        except ValueError:
            raise ValueError(
                f"HELIOS_KEEP_DAYS must be a number of days or {FOREVER!r}, got {self.keep_days!r}"
            ) from None
        if days < 0:
            raise ValueError(f"HELIOS_KEEP_DAYS must not be negative, got {self.keep_days!r}")
        return days * 86400

    def finished(self, render_key: str, now: float | None = None) -> list[str]:
        """A render's final video passed its check: apply the retention rule; returns the renders cleaned up."""
        now = time.time() if now is None else now
        keep = self._keep_seconds
        if keep is None:
            return []
        self.store.write_bytes(f"retention/{render_key}.json", json.dumps({"finished_at": now}).encode())
        cleaned = []
        for key in self.store.list("retention/"):
            name = Path(key).name.removesuffix(".json")
            try:
                finished_at = float(json.loads(self.store.read_bytes(key) or b"{}")["finished_at"])
            except (ValueError, KeyError):
                continue
            if now - finished_at >= keep:
                self.remove_render_files(name)
                self.store.delete_prefix(key)
                cleaned.append(name)
        return cleaned

    def remove_render_files(self, render_key: str) -> None:
        """Remove what only served the render (chunks, progress, its bundle once no render uses it).

        The spec snapshot and the registration stay: the render can still be re-run from its snapshot.
        So does the concat (one file the size of the video): an edit of the render's sound re-mixes
        from it without rendering a frame, and a new concat replaces it when the pictures change.
        """
        base = f"renders/{render_key}/"
        for key in self.store.list(base):
            if not _kept(Path(key).name):
                self.store.delete_prefix(key)
        bundle = self.registration(render_key).get("bundle")
        if bundle:
            key = bundle["key"]
            self.store.delete_prefix(f"{key}.refs/{render_key}")
            if not self.store.list(f"{key}.refs/"):
                self.store.delete_prefix(key)
                self.store.delete_prefix(f"{key}.json")
        if self.is_remote:  # this machine's working copies too
            import shutil

            shutil.rmtree(self.render_dir(render_key), ignore_errors=True)
