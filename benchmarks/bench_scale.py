"""Scale-out cost: one render on the single-machine default against the same render on Celery + Postgres + S3.

Renders the example composition (examples/promo) at 1280x720, 30 fps, 20 s, in 4 chunks, twice:
(a) the one-machine default: SQLite instance, local storage, local run processes, the project's daemon;
(b) the Celery + Postgres + S3 deployment (deploy/celery/) with two Celery workers on this machine, each
    with its own cache and HOME (no shared disk), on a throwaway Postgres, Redis and moto S3 on 127.0.0.1.
Both are submitted the way `helios-pipeline submit` does it, to an already running deployment, and timed
from submit to the final video; both render 2 chunks at a time (the pool). Prints (b)/(a) and, per chunk,
the upload and download seconds and throughput measured in (b), then projects a 10-minute 1080p render on
8, 32 and 128 workers from the measured per-chunk figures, one run.

    python benchmarks/bench_scale.py [--seconds 20] [--width 1280 --height 720] [--chunks 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from checkout import use_this_checkout

REPO = Path(__file__).resolve().parents[1]
PARALLEL = 2  # chunks at once in both deployments: the machine has 2 cores
PROJECTION_FRAMES = 18_000  # 10 minutes at 30 fps
PROJECTION_FRAMES_PER_CHUNK = 240
PROJECTION_PIXELS = 1920 * 1080


def spec_file(folder: Path, name: str, args: argparse.Namespace, output: str) -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "name": name,
        "composition": str(REPO / "examples" / "promo" / "index.html"),
        "width": args.width,
        "height": args.height,
        "fps": 30,
        "duration_in_seconds": args.seconds,
        "concurrency": args.chunks,
        "input_props": {"title": "benchmark", "duration": args.seconds},
        "output": output,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def submit_and_follow(env: dict[str, str], spec: Path, instance: Any) -> tuple[str, float]:
    """`helios-pipeline submit SPEC`, then follow the render to its final video; (key, wall seconds)."""
    import subprocess

    from helios_pipeline.dagster_defs.runner import follow

    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "helios_pipeline.cli", "submit", str(spec)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"submit failed: {result.stderr}")
    key = result.stdout.strip().splitlines()[-1]
    follow(instance, key, started, lambda _status: None, timeout=1800)
    return key, time.time() - started


def chunk_figures(instance: Any, key: str, chunks: int) -> dict[str, float]:
    """Per-chunk means from the chunk and concat materialisations (what the runs measured themselves)."""
    import dagster as dg

    rows = []
    for index in range(chunks):
        partition = str(dg.MultiPartitionKey({"render": key, "chunk": f"{index:03d}"}))
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("chunk_video"), asset_partitions=[partition]), limit=1
        ).records[0]
        rows.append({name: value.value for name, value in record.asset_materialization.metadata.items()})
    concat = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("concat_video"), asset_partitions=[key]), limit=1
    ).records[0]
    concat_meta = {name: value.value for name, value in concat.asset_materialization.metadata.items()}
    mixed = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("mixed_video"), asset_partitions=[key]), limit=1
    ).records[0]
    mix_seconds = float(mixed.asset_materialization.metadata["seconds"].value)
    mean = lambda field: sum(float(row.get(field, 0.0)) for row in rows) / len(rows)  # noqa: E731
    chunk_bytes = mean("bytes")
    upload = mean("upload_seconds")
    download = float(concat_meta.get("fetch_seconds", 0.0)) / chunks
    return {
        "chunk_frames": mean("frames"),
        "chunk_bytes": chunk_bytes,
        "chunk_wall_seconds": mean("wall_seconds"),
        "browser_startup_seconds": mean("browser_startup_seconds"),
        "capture_fps": mean("capture_fps"),
        "upload_seconds": upload,
        "download_seconds": download,
        "upload_mb_per_s": chunk_bytes / upload / 1e6 if upload > 0 else 0.0,
        "download_mb_per_s": chunk_bytes / download / 1e6 if download > 0 else 0.0,
        "concat_seconds": float(concat_meta.get("seconds", 0.0)),
        "mix_seconds": mix_seconds,
        "workers": len({str(row.get("worker_id")) for row in rows}),
        "chunks": chunks,
    }


def one_machine(scratch: Path, args: argparse.Namespace) -> tuple[float, dict[str, float]]:
    from helios_pipeline_tests.helpers import open_instance, running_daemon, wait_for

    home = scratch / "home"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "HELIOS_", "AWS_"))}
    env.update(
        DAGSTER_HOME=str(home), HELIOS_STORAGE=str(scratch / "storage"), HELIOS_INBOX=str(scratch / "inbox"),
        HELIOS_MAX_CHUNKS=str(args.chunks), HELIOS_KEEP_DAYS="forever",
    )  # fmt: skip
    (scratch / "inbox").mkdir()
    os.environ.update(env)
    instance = open_instance(home)
    with running_daemon(env, scratch / "daemon.log"):
        wait_for(lambda: "ASSET" in instance.get_daemon_heartbeats(), 120, "the daemon", 0.5)
        spec = spec_file(scratch / "specs", "one-machine", args, str(scratch / "out" / "one-machine.mp4"))
        key, seconds = submit_and_follow(env, spec, instance)
    return seconds, chunk_figures(instance, key, args.chunks)


def transfer_probe(location: str, scratch: Path, megabytes: int = 32) -> dict[str, float]:
    """Upload and download throughput of one chunk-sized object through the project's store (multipart)."""
    from helios_pipeline.storage import open_store

    store = open_store(location)
    source = scratch / "probe.bin"
    source.write_bytes(os.urandom(megabytes * 1024 * 1024))
    started = time.perf_counter()
    info = store.publish(source, "probe/probe.bin")
    upload = time.perf_counter() - started
    started = time.perf_counter()
    store.fetch("probe/probe.bin", scratch / "probe-back.bin", info)
    download = time.perf_counter() - started
    store.delete_prefix("probe/")
    return {"probe_mb": megabytes * 1.048576, "probe_upload_mb_per_s": info.size / upload / 1e6,
            "probe_download_mb_per_s": info.size / download / 1e6}  # fmt: skip


def scaled_out(scratch: Path, args: argparse.Namespace) -> tuple[float, dict[str, float]]:
    from helios_pipeline_tests import services
    from helios_pipeline_tests.cluster import celery_cluster

    with (
        services.postgres() as postgres,
        services.redis() as redis,
        services.s3() as s3,
        celery_cluster(scratch, postgres, redis, s3, pool_slots=PARALLEL, max_chunks=args.chunks) as cluster,
    ):
        env = {**cluster.env_for(cluster.home), "HELIOS_KEEP_DAYS": "forever"}
        bucket = cluster.env["HELIOS_STORAGE"].removeprefix("s3://").split("/")[0]
        spec = spec_file(scratch / "specs", "scaled-out", args, f"s3://{bucket}/videos/scaled-out.mp4")
        key, seconds = submit_and_follow(env, spec, cluster.instance)
        figures = chunk_figures(cluster.instance, key, args.chunks)
        figures.update(transfer_probe(cluster.env["HELIOS_STORAGE"], scratch))
        return seconds, figures


def projection(figures: dict[str, float], width: int, height: int, workers: int) -> dict[str, float]:
    """Wall time of a 10-minute 1080p render on ``workers`` chunk workers, from the per-chunk figures.

    Capture speed and chunk size are scaled by pixels per frame from the measured resolution (DOM capture
    and x264 are about proportional to pixels); transfers use the throughput of a chunk-sized probe object
    (the real chunks of a 20 s render are too small to measure anything but request latency). Chunks render
    in waves of ``workers``; then, one after the other, the concat downloads every chunk and joins them
    (scaled by bytes) and the mix encodes the audio and copies the video (scaled by duration). Both are
    linear extrapolations of one short render, so their fixed start-up costs make them upper bounds.
    """
    scale = PROJECTION_PIXELS / (width * height)
    chunks = math.ceil(PROJECTION_FRAMES / PROJECTION_FRAMES_PER_CHUNK)
    capture_fps = figures["capture_fps"] / scale
    bytes_per_frame = figures["chunk_bytes"] / figures["chunk_frames"] * scale
    chunk_bytes = bytes_per_frame * PROJECTION_FRAMES_PER_CHUNK
    upload = chunk_bytes / (figures["probe_upload_mb_per_s"] * 1e6)
    chunk_seconds = figures["browser_startup_seconds"] + PROJECTION_FRAMES_PER_CHUNK / capture_fps + upload
    waves = math.ceil(chunks / workers)
    total_bytes = chunk_bytes * chunks
    download = total_bytes / (figures["probe_download_mb_per_s"] * 1e6)
    measured_frames = figures["chunk_frames"] * figures["chunks"]
    join = figures["concat_seconds"] * PROJECTION_FRAMES / measured_frames * scale
    mix = figures["mix_seconds"] * PROJECTION_FRAMES / measured_frames  # audio-bound: scales with duration
    return {
        "workers": workers,
        "chunks": chunks,
        "chunk_seconds": chunk_seconds,
        "render_seconds": waves * chunk_seconds,
        "concat_download_seconds": download,
        "concat_join_seconds": join,
        "mix_seconds": mix,
        "total_seconds": waves * chunk_seconds + download + join + mix,
        "video_gb": total_bytes / 1e9,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folders (path printed)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="helios-bench-scale-"))
    saved_env = dict(os.environ)
    try:
        single_seconds, single = one_machine(scratch / "one-machine", args)
        os.environ.clear()
        os.environ.update(saved_env)
        scaled_seconds, scaled = scaled_out(scratch / "scaled-out", args)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    ratio = scaled_seconds / single_seconds
    print(f"{args.width}x{args.height}, 30 fps, {args.seconds:g} s, {args.chunks} chunks, {PARALLEL} at a time")
    print(f"  (a) one machine (SQLite, local storage)        {single_seconds:7.1f} s")
    print(f"  (b) Celery + Postgres + S3, {scaled['workers']:.0f} workers          {scaled_seconds:7.1f} s")
    print(f"  ratio (b)/(a) {ratio:.2f}  (target <= 1.3)")
    print(
        f"  per chunk in (b): {scaled['chunk_bytes'] / 1e6:.1f} MB, render {scaled['chunk_wall_seconds']:.1f} s "
        f"(browser start {scaled['browser_startup_seconds']:.1f} s, capture {scaled['capture_fps']:.1f} frames/s), "
        f"upload {scaled['upload_seconds']:.2f} s ({scaled['upload_mb_per_s']:.0f} MB/s), "
        f"download {scaled['download_seconds']:.2f} s ({scaled['download_mb_per_s']:.0f} MB/s)"
    )
    print(
        f"  transfer probe ({scaled['probe_mb']:.0f} MB object, multipart): upload "
        f"{scaled['probe_upload_mb_per_s']:.0f} MB/s, download {scaled['probe_download_mb_per_s']:.0f} MB/s"
    )
    projections = [projection(scaled, args.width, args.height, workers) for workers in (8, 32, 128)]
    print(f"  projected 10-minute 1080p render ({PROJECTION_FRAMES} frames, {PROJECTION_FRAMES_PER_CHUNK} per chunk):")
    for row in projections:
        print(
            f"    {row['workers']:>3} workers: {row['total_seconds'] / 60:5.1f} min = chunks "
            f"{row['render_seconds']:6.0f} s + concat download {row['concat_download_seconds']:4.0f} s "
            f"+ join {row['concat_join_seconds']:3.0f} s + mix {row['mix_seconds']:3.0f} s "
            f"({row['chunks']} chunks of {row['chunk_seconds']:.0f} s, "
            f"{row['video_gb']:.2f} GB)"
        )
    print(json.dumps({"one_machine_seconds": single_seconds, "scaled_out_seconds": scaled_seconds, "ratio": ratio,
                      "one_machine": single, "scaled_out": scaled, "projection": projections}))  # fmt: skip
    if args.keep:
        print(f"kept: {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    use_this_checkout(REPO)
    sys.exit(main())
