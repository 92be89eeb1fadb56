"""S3 storage against a real S3 API on 127.0.0.1 (moto's server): uploads, checksums, bundles, outputs, retention.

The render tests run the Dagster assets in-process with ``HELIOS_STORAGE=s3://…``: after registration the
composition's folder is moved away, so every chunk renders from the bundle, and the final video is
downloaded from S3 and decoded frame by frame.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from botocore.exceptions import ConnectionClosedError

from helios_pipeline.dagster_defs.assets import chunk_video, concat_video, mixed_video, render_plan
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.spec import RenderSpec, load_spec
from helios_pipeline.storage import ObjectInfo, StorageError, open_store
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import frame_indices
from helios_pipeline_tests.helpers import (
    CHUNK_KEYS,
    chunk_key,
    latest_metadata,
    register,
    run,
    write_spec,
)
from helios_pipeline_tests.services import S3Server


@pytest.fixture
def s3_env(s3_bucket: tuple[str, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """This process talks to the test bucket through boto3's own variables; returns the bucket."""
    bucket, env = s3_bucket
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HELIOS_CACHE", str(tmp_path / "cache"))
    return bucket


def keys(server: S3Server, bucket: str, prefix: str = "") -> list[str]:
    response = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in response.get("Contents", []))


# --- the store ------------------------------------------------------------------------------------


def test_publish_and_fetch_round_trip_with_checksum(s3_env: str, s3_server: S3Server, tmp_path: Path) -> None:
    store = open_store(f"s3://{s3_env}/team/a")
    source = tmp_path / "chunk.mov"
    source.write_bytes(os.urandom(9 * 1024 * 1024 + 17))  # above the multipart threshold
    info = store.publish(source, "renders/r/chunk_0000.mov")

    assert keys(s3_server, s3_env) == ["team/a/renders/r/chunk_0000.mov"], (
        "the layout under the prefix is the local one"
    )
    head = s3_server.client().head_object(Bucket=s3_env, Key="team/a/renders/r/chunk_0000.mov")
    assert head["Metadata"]["sha256"] == info.sha256 and head["ContentLength"] == info.size
    fetched = tmp_path / "elsewhere" / "chunk.mov"
    assert store.fetch("renders/r/chunk_0000.mov", fetched, info) == info
    assert fetched.read_bytes() == source.read_bytes()


def test_a_changed_object_is_refused_naming_it(s3_env: str, s3_server: S3Server, tmp_path: Path) -> None:
    store = open_store(f"s3://{s3_env}")
    source = tmp_path / "chunk.mov"
    source.write_bytes(b"x" * 1000)
    info = store.publish(source, "renders/r/chunk_0001.mov")
    s3_server.client().put_object(Bucket=s3_env, Key="renders/r/chunk_0001.mov", Body=b"y" * 1000)

    target = tmp_path / "fetched.mov"
    with pytest.raises(StorageError, match=r"chunk_0001\.mov: SHA-256"):
        store.fetch("renders/r/chunk_0001.mov", target, info)
    assert not target.exists(), "a refused download leaves no file"
    assert not list(tmp_path.glob(".fetched.mov*")), "nor a partial one"
    with pytest.raises(StorageError, match=r"999 were recorded"):
        store.fetch("renders/r/chunk_0001.mov", target, ObjectInfo(size=999, sha256=info.sha256))


def test_a_missing_bucket_names_the_bucket_and_the_call(s3_env: str) -> None:
    with pytest.raises(StorageError, match=r"HeadBucket s3://no-such-bucket-here: .*(404|NoSuchBucket|Not Found)"):
        open_store("s3://no-such-bucket-here/x").check()


def test_missing_credentials_are_named(s3_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError, match=rf"HeadBucket s3://{s3_env}: Unable to locate credentials"):
        open_store(f"s3://{s3_env}").check()


@pytest.mark.parametrize("location", ["s3://Bad_Bucket/x", "gs://bucket/x"])
def test_bad_locations_are_refused_with_the_reason(location: str) -> None:
    with pytest.raises(ValueError, match="HELIOS_STORAGE"):
        open_store(location)


UPLOADER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from helios_pipeline.storage import open_store

    store = open_store(sys.argv[1])
    parts = []

    def after_part(**kwargs):
        parts.append(1)
        print("part", flush=True)
        time.sleep(60)  # killed here, with a part uploaded and the upload not completed

    store.client.meta.events.register("after-call.s3.UploadPart", after_part)
    store.publish(Path(sys.argv[2]), "renders/r/chunk_0000.mov")
    """
)


def test_an_upload_cut_off_midway_leaves_no_object(s3_env: str, s3_server: S3Server, tmp_path: Path) -> None:
    big = tmp_path / "big.mov"
    big.write_bytes(os.urandom(20 * 1024 * 1024))
    uploader = subprocess.Popen(
        [sys.executable, "-c", UPLOADER, f"s3://{s3_env}", str(big)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert uploader.stdout is not None and uploader.stdout.readline().strip() == "part"
    finally:
        uploader.send_signal(signal.SIGKILL)
        uploader.wait()
    client = s3_server.client()
    assert client.list_multipart_uploads(Bucket=s3_env).get("Uploads"), "the upload was under way"
    assert keys(s3_server, s3_env) == [], "a killed upload must leave no object that looks finished"


def test_a_failed_upload_is_aborted(s3_env: str, s3_server: S3Server, tmp_path: Path) -> None:
    store = open_store(f"s3://{s3_env}")
    big = tmp_path / "big.mov"
    big.write_bytes(os.urandom(20 * 1024 * 1024))
    calls = []

    def fail_second_part(**kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionClosedError(endpoint_url="http://127.0.0.1 (injected: connection reset)")

    store.client.meta.events.register("before-call.s3.UploadPart", fail_second_part)
    with pytest.raises(StorageError, match=r"upload .*big\.mov to s3://"):
        store.publish(big, "renders/r/chunk_0000.mov")
    assert keys(s3_server, s3_env) == []
    assert not s3_server.client().list_multipart_uploads(Bucket=s3_env).get("Uploads"), "the upload was aborted"


# --- renders through the Dagster assets -----------------------------------------------------------


def render_on_s3(
    tmp_path: Path, instance: dg.DagsterInstance, storage: RenderStorage, **fields: object
) -> tuple[str, Path]:
    """Register a copy of frame_raf, move the copy away, then plan, render both chunks, concat and mix."""
    composition = tmp_path / "comp"
    shutil.copytree(COMPOSITIONS / "frame_raf", composition)
    spec_file = write_spec(tmp_path / "specs", "s3-exact", composition, frame_count=24, concurrency=2, **fields)
    key = register(instance, storage, spec_file)
    moved = tmp_path / "moved-away"
    composition.rename(moved)
    run(instance, storage, [render_plan], key)
    for chunk in CHUNK_KEYS:
        run(instance, storage, [chunk_video], chunk_key(key, chunk))
    return key, moved


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.mark.slow
def test_render_from_the_bundle_to_an_s3_output_is_frame_exact(
    s3_env: str, s3_server: S3Server, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    storage = RenderStorage(location=f"s3://{s3_env}/renders-root")
    output = f"s3://{s3_env}/videos/s3-exact.mp4"
    key, _moved = render_on_s3(tmp_path, instance, storage, output=output, poster_frame=20)
    bundles = keys(s3_server, s3_env, "renders-root/bundles/")
    assert any(name.endswith(".tar.gz") for name in bundles), bundles
    for chunk in ("000", "001"):
        metadata = latest_metadata(instance, chunk_video.key, str(chunk_key(key, chunk)))
        assert metadata["path"].value.startswith(f"s3://{s3_env}/renders-root/renders/{key}/chunk_")
        assert len(metadata["sha256"].value) == 64 and metadata["upload_seconds"].value >= 0

    run(instance, storage, [concat_video, mixed_video], key)

    downloaded = tmp_path / "downloaded.mp4"
    s3_server.client().download_file(s3_env, "videos/s3-exact.mp4", str(downloaded))
    assert frame_indices(downloaded) == list(range(24))
    final = latest_metadata(instance, mixed_video.key, key)
    assert final["path"].value == output
    with urllib.request.urlopen(final["url"].value, timeout=10) as response:  # presigned SigV4 GET
        assert response.read() == downloaded.read_bytes()
    assert "X-Amz-Signature" in final["url"].value
    assert keys(s3_server, s3_env, "videos/") == [
        "videos/s3-exact.contact.png",
        "videos/s3-exact.mp4",
        "videos/s3-exact.poster.png",
    ]
    # the poster was rendered from the bundle (the composition was moved away) and uploaded beside the video
    assert final["poster"].value == f"s3://{s3_env}/videos/s3-exact.poster.png"
    poster = tmp_path / "poster.png"
    with urllib.request.urlopen(final["poster_url"].value, timeout=10) as response:
        poster.write_bytes(response.read())
    assert frame_indices(poster) == [20]
    # retention: the video passed its check, so chunks and the bundle are gone; the snapshot stays, and
    # the concat, which an edit of the sound alone re-mixes
    assert keys(s3_server, s3_env, f"renders-root/renders/{key}/") == [
        f"renders-root/renders/{key}/concat.mov",
        f"renders-root/renders/{key}/registration.json",
        f"renders-root/renders/{key}/spec.json",
    ]
    assert keys(s3_server, s3_env, "renders-root/bundles/") == []
    work = storage.render_dir(key)
    assert not work.exists() or not any(path.is_file() for path in work.rglob("*")), "no leftovers in the cache"


@pytest.mark.slow
def test_concat_refuses_a_chunk_changed_in_storage(
    s3_env: str, s3_server: S3Server, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    storage = RenderStorage(location=f"s3://{s3_env}", keep_days="forever")
    key, _ = render_on_s3(tmp_path, instance, storage)
    chunk_object = f"renders/{key}/chunk_0001.mov"
    client = s3_server.client()
    body = client.get_object(Bucket=s3_env, Key=chunk_object)["Body"].read()
    client.put_object(Bucket=s3_env, Key=chunk_object, Body=body[:-100] + bytes(100))

    result = run(instance, storage, [concat_video, mixed_video], key, raise_on_error=False)

    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    message = failure.step_failure_data.error.message
    assert "chunk 001" in message and "SHA-256" in message and chunk_object in message
    evaluation = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)[0]
    assert evaluation.dagster_event.event_specific_data.passed is False


def test_an_s3_output_survives_the_spec_snapshot(tmp_path: Path) -> None:
    """The registered spec is stored as JSON and read back on workers: the URI must stay a URI."""
    spec_file = write_spec(tmp_path, "snap", COMPOSITIONS / "frame_raf", frame_count=4, output="s3://bucket-x/v/a.mp4")
    spec = load_spec(spec_file)
    again = RenderSpec.model_validate_json(spec.model_dump_json())
    assert again.output_uri == spec.output_uri == "s3://bucket-x/v/a.mp4"
    assert not Path("s3:").exists()


def test_the_library_renders_to_an_s3_output(
    s3_env: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``RenderOrchestrator.render`` (and ``render --local``): made in a temporary work folder, then uploaded; nothing
    of it is left in the temporary folder."""
    import tempfile

    from helios_pipeline.orchestrator import RenderOrchestrator

    temporary = tmp_path / "temporary"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    output = f"s3://{s3_env}/library/clip.mp4"
    result = RenderOrchestrator.render(
        str(COMPOSITIONS / "frame_raf"), output, width=128, height=128, fps=30, frame_count=12, concurrency=2
    )

    assert result.output == output and result.contact_sheet is None
    assert keys(s3_server, s3_env) == ["library/clip.contact.png", "library/clip.mp4"]
    downloaded = tmp_path / "clip.mp4"
    s3_server.client().download_file(s3_env, "library/clip.mp4", str(downloaded))
    assert frame_indices(downloaded) == list(range(12))
    assert result.plan.work_dir.parent == temporary
    assert not result.plan.work_dir.exists(), "the local copies are gone"
    assert not [path.name for path in temporary.iterdir() if "helios" in path.name], "left in the temporary folder"
