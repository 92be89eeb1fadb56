"""Dagster overhead: one render through Dagster against the same render through the library.

Renders the example composition (examples/promo) at 1280x720, 30 fps, 20 s, in 2 chunks:
1. with the library orchestrator (RenderOrchestrator.render, local worker processes);
2. through Dagster as the UI's backfill (plan run, 2 chunk runs, concat+mix run) on a real daemon;
3. through Dagster the way `helios-pipeline render` does it (plan in-process, then a backfill of
   the 2 chunk runs and the concat+mix run).
The daemon is the project's (`helios_pipeline.dagster_defs.daemon`: Dagster's daemon with a 2 s
backfill loop), as `helios-pipeline ui` and the CLI run it.
Prints wall times, the ratios Dagster/library and the per-run overhead they imply, from one run.

    python benchmarks/bench_dagster.py [--repeat 3] [--seconds 20] [--width 1280 --height 720]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHUNKS = 2


def deployment_cpu_seconds() -> float:
    """CPU seconds used so far by the daemon and its code server themselves (not by the run workers)."""
    import psutil

    total = 0.0
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if "helios_pipeline.dagster_defs.daemon" in command or "dagster api grpc" in command:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
    return total


def dagster_chunk_wall_seconds(instance, render_key: str) -> float:
    """The slowest chunk's wall seconds as its materialisation recorded them."""
    import dagster as dg

    walls = []
    for chunk in range(CHUNKS):
        partition = str(dg.MultiPartitionKey({"render": render_key, "chunk": f"{chunk:03d}"}))
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("chunk_video"), asset_partitions=[partition]), limit=1
        ).records
        walls.append(float(records[0].asset_materialization.metadata["wall_seconds"].value))
    return max(walls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--repeat", type=int, default=1, help="rounds (each path once per round); medians")
    parser.add_argument("--keep", action="store_true", help="keep the instance and outputs (path printed)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="helios-bench-dagster-"))
    home = scratch / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    os.environ.update(
        DAGSTER_HOME=str(home),
        HELIOS_STORAGE=str(scratch / "storage"),
        HELIOS_INBOX=str(scratch / "inbox"),
        HELIOS_MAX_CHUNKS=str(CHUNKS),
    )
    (scratch / "inbox").mkdir()

    from helios_pipeline.dagster_defs.registry import register_spec
    from helios_pipeline.dagster_defs.runner import (
        ensure_daemon,
        get_instance,
        launch_backfill,
        render_through_dagster,
    )
    from helios_pipeline.dagster_defs.settings import Settings
    from helios_pipeline.dagster_defs.storage import RenderStorage
    from helios_pipeline.orchestrator import RenderOrchestrator, resolve_spec

    def spec_for(name: str):
        return resolve_spec(
            str(REPO / "examples" / "promo" / "index.html"),
            scratch / "out" / f"{name}.mp4",
            {"name": name, "width": args.width, "height": args.height, "fps": 30,
             "duration_in_seconds": args.seconds, "concurrency": CHUNKS,
             "input_props": {"title": "benchmark", "duration": args.seconds}},
        )  # fmt: skip

    def library_round(name: str) -> dict[str, float]:
        started = time.perf_counter()
        result = RenderOrchestrator.render(spec_for(name))
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "chunk_wall_seconds": max(chunk.wall_seconds for chunk in result.chunks)}

    def backfill_round(name: str) -> dict[str, float]:
        """What a UI user does: a render partition, then a backfill of plan + chunks + concat + mix."""
        key, _ = register_spec(storage, spec_for(name), CHUNKS)
        cpu_before = deployment_cpu_seconds()
        started = time.perf_counter()
        instance.add_dynamic_partitions("renders", [key])
        backfill_id = launch_backfill(instance, key)
        while True:
            backfill = instance.get_backfill(backfill_id)
            if backfill is not None and backfill.status.value in ("COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED"):
                break
            time.sleep(0.5)
        if backfill.status.value != "COMPLETED_SUCCESS":
            raise SystemExit(f"backfill {backfill_id} of {key} ended {backfill.status.value}")
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "deployment_cpu_seconds": deployment_cpu_seconds() - cpu_before,
                "chunk_wall_seconds": dagster_chunk_wall_seconds(instance, key)}  # fmt: skip

    def cli_round(name: str) -> dict[str, float]:
        """What `helios-pipeline render` does: plan in-process, then a backfill of chunks + concat + mix."""
        cpu_before = deployment_cpu_seconds()
        started = time.perf_counter()
        render_through_dagster(spec_for(name), lambda _status: None, timeout=1800)
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "deployment_cpu_seconds": deployment_cpu_seconds() - cpu_before,
                "chunk_wall_seconds": dagster_chunk_wall_seconds(instance, name)}  # fmt: skip

    rounds: dict[str, list[dict[str, float]]] = {"library": [], "backfill": [], "cli": []}
    instance = get_instance()
    storage = RenderStorage(location=str(Settings.from_env().storage))
    with ensure_daemon(instance):
        time.sleep(5)  # let the daemon's first sensor and automation ticks pass
        for index in range(args.repeat):  # interleaved, so a slow spell on the machine hits every path alike
            rounds["library"].append(library_round(f"library-{index}"))
            rounds["backfill"].append(backfill_round(f"backfill-{index}"))
            rounds["cli"].append(cli_round(f"cli-{index}"))

    results: dict[str, float] = {"repeat": args.repeat}
    for path, measured in rounds.items():
        for field in measured[0]:
            results[f"{path}_{field}"] = statistics.median(m[field] for m in measured)
    runs = {"backfill": 1 + CHUNKS + 1, "cli": CHUNKS + 1}  # (plan), chunks, concat+mix
    library = results["library_seconds"]
    for path in ("backfill", "cli"):
        results[f"{path}_ratio"] = results[f"{path}_seconds"] / library
        results[f"{path}_overhead_per_run_seconds"] = (results[f"{path}_seconds"] - library) / runs[path]
    print(f"{args.width}x{args.height}, 30 fps, {args.seconds:g} s, {CHUNKS} chunks, medians of {args.repeat}")
    print(f"  library orchestrator       {library:7.1f} s")
    for path in ("backfill", "cli"):
        print(
            f"  dagster {path:<18} {results[f'{path}_seconds']:7.1f} s  ratio {results[f'{path}_ratio']:.2f}  "
            f"overhead/run {results[f'{path}_overhead_per_run_seconds']:.1f} s ({runs[path]} runs)"
        )
    print(
        f"  slowest chunk: library {results['library_chunk_wall_seconds']:.1f} s, dagster backfill "
        f"{results['backfill_chunk_wall_seconds']:.1f} s, cli {results['cli_chunk_wall_seconds']:.1f} s; "
        f"daemon + code server CPU: backfill {results['backfill_deployment_cpu_seconds']:.1f} s, "
        f"cli {results['cli_deployment_cpu_seconds']:.1f} s"
    )
    print(json.dumps(results))
    if args.keep:
        print(f"kept: DAGSTER_HOME={home}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
