"""The S3 store: objects under ``s3://bucket/prefix`` with the local layout, a local cache as work folder.

Credentials, region and endpoint come from boto3's own configuration (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` for S3-compatible stores), or from the client given (dagster-aws's
``S3Resource``). Uploads above 8 MiB are multipart; a failed or interrupted upload is aborted by
boto3's transfer manager, and a killed process never completes it, so no object under a key is
ever half-written. Every object records its SHA-256 as user metadata.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from helios_pipeline.disk_full import is_no_space
from helios_pipeline.storage.location import StorageLocation, cache_root, split_s3_uri
from helios_pipeline.storage.store import ObjectInfo, StorageError, Store, check_info, file_info, write_error

MULTIPART_THRESHOLD = 8 * 1024 * 1024
PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4's longest
T = TypeVar("T")


def default_client() -> Any:
    import boto3

    return boto3.session.Session().client("s3")


def describe_error(exc: BaseException) -> str:
    """botocore's errors as one readable reason (HTTP code and S3's own message)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        code = error.get("Code", "?")
        message = error.get("Message") or {
            "404": "not found",
            "403": "access denied (check the credentials)",
            "NoSuchBucket": "the bucket does not exist",
        }.get(str(code), "")
        return f"{code} {message}".strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _call(what: str, action: Callable[[], T], writing: Path | None = None) -> T:
    """Run a boto3 call; its failure becomes a StorageError saying ``what`` (a full disk names ``writing``)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return action()
    except OSError as exc:
        if writing is not None and is_no_space(exc):
            raise write_error(exc, writing) from None
        raise StorageError(f"{what}: {describe_error(exc)}") from None
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"{what}: {describe_error(exc)}") from None


def _is_missing(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    code = str(response.get("Error", {}).get("Code")) if isinstance(response, dict) else ""
    return code in ("404", "NoSuchKey", "NotFound")


class S3Store(Store):
    def __init__(self, location: StorageLocation, client: Any | None = None):
        assert location.bucket is not None
        self.location = location
        self.bucket = location.bucket
        self.prefix = location.prefix
        self.client = client or default_client()

    def object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def work_dir(self, render_key: str) -> Path:
        return cache_root() / "s3" / self.bucket / (self.prefix or "_") / "renders" / render_key

    def check(self) -> None:
        _call(f"HeadBucket s3://{self.bucket}", lambda: self.client.head_bucket(Bucket=self.bucket))

    def read_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise StorageError(f"GetObject {self.uri(key)}: {describe_error(exc)}") from None
        return response["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        _call(
            f"PutObject {self.uri(key)}",
            lambda: self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data),
        )

    def publish(self, local: Path, key: str) -> ObjectInfo:
        info = file_info(local)
        upload_file(self.client, local, self.bucket, self.object_key(key), info)
        return info

    def fetch(self, key: str, local: Path, expected: ObjectInfo | None = None) -> ObjectInfo:
        if expected is not None and local.is_file() and local.stat().st_size == expected.size:
            cached = file_info(local)
            if cached == expected:  # this machine already has it (the concat run's own chunks, a cached bundle)
                return cached
        local.parent.mkdir(parents=True, exist_ok=True)
        with _partial(local) as partial:
            _call(
                f"download {self.uri(key)}",
                lambda: self.client.download_file(self.bucket, self.object_key(key), str(partial)),
                writing=local,
            )
            info = file_info(partial)
            check_info(self.uri(key), info, expected)
            os.replace(partial, local)
        return info

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _is_missing(exc):
                return False
            raise StorageError(f"HeadObject {self.uri(key)}: {describe_error(exc)}") from None
        return True

    def list(self, prefix: str) -> list[str]:
        start = self.object_key(prefix)
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        pages = _call(
            f"ListObjectsV2 {self.uri(prefix)}", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=start))
        )
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in pages:
            keys += [item["Key"][strip:] for item in page.get("Contents", [])]
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> int:
        keys = [self.object_key(key) for key in self.list(prefix)]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            _call(
                f"DeleteObjects {self.uri(prefix)}",
                lambda batch=batch: self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch}),
            )
        return len(keys)


@contextlib.contextmanager
def _partial(final: Path) -> Iterator[Path]:
    temp = final.with_name(f".{final.name}.download-{os.getpid()}")
    try:
        yield temp
    finally:
        temp.unlink(missing_ok=True)


def upload_file(client: Any, local: Path, bucket: str, key: str, info: ObjectInfo | None = None) -> ObjectInfo:
    """Upload ``local`` (multipart when large) with its SHA-256 as metadata; all or nothing under ``key``."""
    from boto3.s3.transfer import TransferConfig

    info = info or file_info(local)
    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD)
    _call(
        f"upload {local} to s3://{bucket}/{key}",
        lambda: client.upload_file(
            str(local), bucket, key, ExtraArgs={"Metadata": {"sha256": info.sha256}}, Config=config
        ),
    )
    return info


def upload_to_uri(client: Any, local: Path, uri: str) -> ObjectInfo:
    bucket, key = split_s3_uri(uri, what="output")
    return upload_file(client, local, bucket, key)


def download_from_uri(client: Any, uri: str, local: Path) -> None:
    bucket, key = split_s3_uri(uri, what="output")
    local.parent.mkdir(parents=True, exist_ok=True)
    with _partial(local) as partial:
        _call(f"download {uri}", lambda: client.download_file(bucket, key, str(partial)), writing=local)
        os.replace(partial, local)


def presigned_url(uri: str, client: Any | None = None, expires: int = PRESIGN_SECONDS) -> str:
    """A SigV4 presigned GET URL for ``uri`` (botocore presigns SigV2 in us-east-1 unless told otherwise)."""
    import boto3
    from botocore.config import Config

    bucket, key = split_s3_uri(uri)
    endpoint = client.meta.endpoint_url if client is not None else None
    region = (client.meta.region_name if client is not None else None) or None
    signer = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=region, config=Config(signature_version="s3v4")
    )
    return signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)
