"""Dagster overhead: one render through Dagster against the same render through the library.

Renders the example composition (examples/promo) at 1280x720, 30 fps, 20 s, in 2 chunks:
1. with the library orchestrator, as `helios-pipeline render --local` (a process of its own, timed from its
   start to its exit);
2. through Dagster as the UI's backfill (plan run, 2 chunk runs, concat+mix run) on a running daemon;
3. as `helios-pipeline render` (a process of its own: its start, its imports of Dagster, the plan in-process,
   then a backfill of the 2 chunk runs and the concat+mix run), with a running deployment (its daemon already up);
4. the same when the CLI starts its own daemon (none running), as on a fresh checkout.
The daemon is the project's (`helios_pipeline.dagster_defs.daemon`: Dagster's daemon with a short
backfill loop), as `helios-pipeline ui` and the CLI run it.
Prints wall times, the ratios Dagster/library, the fixed cost (Dagster's wall time minus the
library's, same round: what `helios-pipeline render` costs over `helios-pipeline render --local`) and, for
each Dagster path, where that time went: the gaps between the milestones of the render's critical path,
read from the runs' own event timestamps ("asked for" is the CLI's start).

    python benchmarks/bench_dagster.py [--repeat 3] [--seconds 20] [--width 1280 --height 720]
    python benchmarks/bench_dagster.py --paths cli cli-own      # leave out the UI backfill
    python benchmarks/bench_dagster.py --memory --width 1920 --height 1080   # peak PSS per chunk worker too
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_history import at_least
from checkout import use_this_checkout

REPO = Path(__file__).resolve().parents[1]
CHUNKS = 2


def process_kind(name: str, command: str) -> str:
    """What a descendant process is to a render: the CLI, a Dagster process or one of the rendering tools."""
    if "chrom" in name or "headless_shell" in name:
        return "chromium"
    if name.startswith(("ffmpeg", "ffprobe")):
        return "ffmpeg"
    if name.startswith("helios-") or "multiprocessing.forkserver" in command:  # the warm launcher's processes
        return "run workers"
    if "helios_pipeline.cli" in command:  # the `helios-pipeline render` being timed
        return "caller"
    if "helios_pipeline.dagster_defs.daemon" in command:
        return "daemon"
    if " api grpc " in command or "dagster code-server" in command:  # Dagster's server, or the early one
        return "code server"
    return "run workers" if "python" in name else "other"


def deployment_cpu(cpu: CpuByKind) -> float:
    """What the daemon and its code servers used during the round (not the run workers)."""
    return cpu.by_kind.get("daemon", 0.0) + cpu.by_kind.get("code server", 0.0)


class CpuByKind:
    """CPU seconds used by this process and its descendants during a round, by kind of process.

    Samples every ``interval`` s (a process that ends loses what it used since its last sample: short
    ffprobes, the tail of a chunk's FFmpeg), beside the machine's own CPU counters, which miss nothing
    (and count whatever else ran, this sampler included; the caller's figure leaves the sampler out).
    """

    def __init__(self, interval: float = 0.1) -> None:
        import threading

        self.interval, self.seen, self.baseline = interval, {}, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            try:
                with process.oneshot():
                    kind = "caller" if process is me else process_kind(process.name(), " ".join(process.cmdline()))
                    times = process.cpu_times()
                    self.seen[(process.pid, process.create_time())] = (kind, times.user + times.system)
            except psutil.Error:
                continue

    def _sample_until_stopped(self) -> None:
        while not self.stop.wait(self.interval):
            self._sample()
        self.own_seconds = time.thread_time()  # the sampler's own CPU, taken out of the caller's

    def __enter__(self) -> CpuByKind:
        import psutil

        self._sample()
        self.baseline = {key: seconds for key, (_, seconds) in self.seen.items()}
        self.machine_before = psutil.cpu_times()
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        import psutil

        self.stop.set()
        self.thread.join()
        self._sample()
        after = psutil.cpu_times()
        self.machine = sum(
            getattr(after, field) - getattr(self.machine_before, field) for field in ("user", "system", "nice")
        )
        self.by_kind: dict[str, float] = {}
        for key, (kind, seconds) in self.seen.items():
            self.by_kind[kind] = self.by_kind.get(kind, 0.0) + seconds - self.baseline.get(key, 0.0)
        self.by_kind["caller"] -= self.own_seconds


class WorkerMemory:
    """With ``--memory``: the peak PSS of each chunk worker's process tree (the Python process that drives a
    Chromium over its DevTools pipe, with Chromium and FFmpeg), split by kind, and the
    deployment's own processes (daemon, fork server, code server) at the same moments; sampled every ``interval``
    s (reading ``smaps_rollup`` costs ~1 ms per process, so it is opt-in: it takes CPU from the render it times).

    A Dagster chunk run is a process of its own; the library renders its chunks as threads of the CLI's process,
    one browser each, so its tree is divided by its browsers: the figures are per chunk either way."""

    def __init__(self, enabled: bool, interval: float = 1.0) -> None:
        import threading

        self.enabled, self.interval = enabled, interval
        self.workers: dict[int, dict[str, float]] = {}  # root pid -> the split at that tree's peak (MB)
        self.deployment = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def _sample(self) -> None:
        import psutil

        seen: dict[int, tuple[str, float, int]] = {}  # pid -> (kind, PSS in MB, parent pid)
        for process in psutil.Process().children(recursive=True):
            try:
                with process.oneshot():
                    name, command = process.name(), " ".join(process.cmdline())
                    kind = "fork server" if name.startswith("helios-forks") else process_kind(name, command)
                    seen[process.pid] = (kind, process.memory_full_info().pss / 2**20, process.ppid())
            except psutil.Error:
                continue
        # a chunk's browser: the topmost Chromium process (or the wrapper script running it) below a Python one
        browsers = [
            (pid, parent) for pid, (kind, _, parent) in seen.items()
            if kind == "chromium" and parent in seen and seen[parent][0] != "chromium"
        ]  # fmt: skip
        roots = {parent for _, parent in browsers}
        trees: dict[int, dict[str, float]] = {root: {} for root in roots}
        for pid, (kind, pss, _) in seen.items():
            root = pid
            while root in seen and root not in roots:
                root = seen[root][2]
            if root in roots:
                split = trees[root]
                label = "python" if pid == root else kind
                split[label] = split.get(label, 0.0) + pss
        for root, split in trees.items():
            chunks = sum(1 for _, parent in browsers if parent == root)
            split = {kind: mb / chunks for kind, mb in split.items()}
            if sum(split.values()) > sum(self.workers.get(root, {}).values()):
                self.workers[root] = split
        deployment = sum(pss for kind, pss, _ in seen.values() if kind in ("daemon", "code server", "fork server"))
        self.deployment = max(self.deployment, deployment)

    def _sample_until_stopped(self) -> None:
        while not self.stop.wait(self.interval):
            self._sample()

    def peak_worker(self) -> dict[str, float]:
        """The split of the chunk worker whose tree peaked highest (empty when none was seen)."""
        return max(self.workers.values(), key=lambda split: sum(split.values()), default={})

    def __enter__(self) -> WorkerMemory:
        if self.enabled:
            self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        if self.enabled:
            self.stop.set()
            self.thread.join()


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


PATHS = ("backfill", "cli", "cli-own")
ENDED_BACKFILL = ("COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED")
RUNS = {"backfill": 1 + CHUNKS + 1, "cli": CHUNKS + 1, "cli-own": CHUNKS + 1}  # (plan), chunks, concat+mix


def breakdown(instance, render_key: str, started: float, ended: float) -> list[tuple[str, float]]:
    """Seconds between the milestones of the render's critical path (runs' event timestamps)."""
    from helios_pipeline.dagster_defs.backfills import render_backfill
    from helios_pipeline.dagster_defs.timeline import critical_path, render_runs, stage_gaps

    backfill = render_backfill(instance, render_key, started)
    backfill_ended = backfill.backfill_end_timestamp if backfill is not None else None
    return stage_gaps(critical_path(render_runs(instance, render_key), started, ended, backfill_ended))


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    number, count = at_least(0.1, float), at_least(1, int)
    parser.add_argument("--seconds", type=number, default=20)
    parser.add_argument("--width", type=at_least(16, int), default=1280)
    parser.add_argument("--height", type=at_least(16, int), default=720)
    parser.add_argument("--repeat", type=count, default=1, help="rounds (each path once per round); medians")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="Dagster paths to time")
    parser.add_argument("--keep", action="store_true", help="keep the instance and outputs (path printed)")
    parser.add_argument(
        "--memory", action="store_true", help="also sample the peak PSS per chunk worker and of the deployment"
    )
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="helios-bench-dagster-"))
    try:
        return measure(args, scratch)
    finally:  # a failed round too: no instance, storage or outputs left in the temporary folder
        if args.keep:
            print(f"kept: DAGSTER_HOME={scratch / 'home'}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def measure(args: argparse.Namespace, scratch: Path) -> int:
    """The rounds, in a fresh instance under ``scratch``; prints the figures."""
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
        daemon_running,
        ensure_daemon,
        get_instance,
        launch_backfill,
    )
    from helios_pipeline.dagster_defs.settings import Settings
    from helios_pipeline.dagster_defs.storage import RenderStorage
    from helios_pipeline.orchestrator import resolve_spec

    def spec_for(name: str):
        return resolve_spec(
            str(REPO / "examples" / "promo" / "index.html"),
            scratch / "out" / f"{name}.mp4",
            {"name": name, "width": args.width, "height": args.height, "fps": 30,
             "duration_in_seconds": args.seconds, "concurrency": CHUNKS,
             "input_props": {"title": "benchmark", "duration": args.seconds}},
        )  # fmt: skip

    def spec_file(name: str) -> Path:
        """The same render as a spec file, for `helios-pipeline render`."""
        path = scratch / f"{name}.json"
        path.write_text(spec_for(name).model_dump_json(), encoding="utf-8")
        return path

    def run_cli(name: str, *options: str) -> tuple[float, float]:
        """`helios-pipeline render` of the round's spec in a process of its own: its wall time, start to exit."""
        command = [sys.executable, "-m", "helios_pipeline.cli", "render", str(spec_file(name)), "-q", *options]
        wall_started, started = time.time(), time.perf_counter()
        finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
        seconds = time.perf_counter() - started
        if finished.returncode != 0:
            raise SystemExit(f"{' '.join(command)} exited {finished.returncode}:\n{finished.stderr}")
        return seconds, wall_started

    def library_round(name: str) -> dict:
        with CpuByKind() as cpu, WorkerMemory(args.memory) as memory:
            seconds, _ = run_cli(name, "--local")
        return {"seconds": seconds, "machine_cpu_seconds": cpu.machine, "cpu": cpu.by_kind, **memory_of(memory)}

    def backfill_round(name: str) -> dict:
        """What a UI user does: a render partition, then a backfill of plan + chunks + concat + mix."""
        key, _ = register_spec(storage, spec_for(name), CHUNKS)
        with CpuByKind() as cpu, WorkerMemory(args.memory) as memory:
            started, wall_started = time.perf_counter(), time.time()
            instance.add_dynamic_partitions("renders", [key])
            backfill_id = launch_backfill(instance, key)
            while True:
                backfill = instance.get_backfill(backfill_id)
                if backfill is not None and backfill.status.value in ENDED_BACKFILL:
                    break
                time.sleep(0.5)
            if backfill.status.value != "COMPLETED_SUCCESS":
                raise SystemExit(f"backfill {backfill_id} of {key} ended {backfill.status.value}")
            seconds = time.perf_counter() - started
        return {"seconds": seconds, "deployment_cpu_seconds": deployment_cpu(cpu),
                "chunk_wall_seconds": dagster_chunk_wall_seconds(instance, key),
                "machine_cpu_seconds": cpu.machine, "cpu": cpu.by_kind, **memory_of(memory),
                "breakdown": breakdown(instance, key, wall_started, wall_started + seconds)}  # fmt: skip

    def cli_round(name: str) -> dict:
        """`helios-pipeline render`: plan in-process, then a backfill of chunks + concat + mix."""
        with CpuByKind() as cpu, WorkerMemory(args.memory) as memory:
            seconds, wall_started = run_cli(name)
        return {"seconds": seconds, "deployment_cpu_seconds": deployment_cpu(cpu),
                "chunk_wall_seconds": dagster_chunk_wall_seconds(instance, name),
                "machine_cpu_seconds": cpu.machine, "cpu": cpu.by_kind, **memory_of(memory),
                "breakdown": breakdown(instance, name, wall_started, wall_started + seconds)}  # fmt: skip

    rounds: dict[str, list[dict]] = {"library": [], **{path: [] for path in args.paths}}
    loads: list[float] = []
    instance = get_instance()
    storage = RenderStorage(location=str(Settings.from_env().storage))
    for index in range(args.repeat):  # interleaved, so a slow spell on the machine hits every path alike
        loads.append(load_average())
        rounds["library"].append(library_round(f"library-{index}"))
        if "cli-own" in args.paths:  # no daemon running: the CLI starts (and stops) its own
            assert not daemon_running(instance), "a daemon is running on the benchmark's instance"
            rounds["cli-own"].append(cli_round(f"cli-own-{index}"))
        if {"backfill", "cli"} & set(args.paths):
            with ensure_daemon(instance):
                time.sleep(5)  # the running deployment: let its first sensor and automation ticks pass
                if "backfill" in args.paths:
                    rounds["backfill"].append(backfill_round(f"backfill-{index}"))
                if "cli" in args.paths:
                    rounds["cli"].append(cli_round(f"cli-{index}"))
        loads.append(load_average())

    results: dict = {"repeat": args.repeat, "load_average_1min": [round(load, 2) for load in loads]}
    for path, measured in rounds.items():
        for field in measured[0]:
            if field not in ("breakdown", "cpu", "worker_pss"):
                results[f"{path}_{field}"] = statistics.median(m[field] for m in measured)
    for path in args.paths:  # fixed cost in each round against that round's library render, then the median
        costs = [m["seconds"] - lib["seconds"] for m, lib in zip(rounds[path], rounds["library"], strict=True)]
        ratios = [m["seconds"] / lib["seconds"] for m, lib in zip(rounds[path], rounds["library"], strict=True)]
        results[f"{path}_fixed_cost_seconds"] = statistics.median(costs)
        results[f"{path}_fixed_cost_rounds"] = [round(cost, 2) for cost in costs]
        results[f"{path}_ratio"] = statistics.median(ratios)
        results[f"{path}_overhead_per_run_seconds"] = results[f"{path}_fixed_cost_seconds"] / RUNS[path]
        # the wall time around the slowest chunk's own rendering: steadier than the fixed cost, which also holds how
        # much faster or slower the VM rendered this path's chunks than the library's
        results[f"{path}_outside_chunk_seconds"] = statistics.median(
            m["seconds"] - m["chunk_wall_seconds"] for m in rounds[path]
        )
        results[f"{path}_breakdown"] = median_breakdown([m["breakdown"] for m in rounds[path]])
    library = results["library_seconds"]
    print(
        f"{args.width}x{args.height}, 30 fps, {args.seconds:g} s, {CHUNKS} chunks, medians of {args.repeat}; "
        f"load average (1 min) {min(loads):.1f}-{max(loads):.1f}"
    )
    print(f"  library (render --local)   {library:7.1f} s")
    names = {"backfill": "backfill (UI)", "cli": "cli, running daemon", "cli-own": "cli, own daemon"}
    for path in args.paths:
        print(
            f"  dagster {names[path]:<20} {results[f'{path}_seconds']:7.1f} s  ratio {results[f'{path}_ratio']:.2f}  "
            f"fixed cost {results[f'{path}_fixed_cost_seconds']:.1f} s ({RUNS[path]} runs; rounds "
            + ", ".join(f"{cost:.1f}" for cost in results[f"{path}_fixed_cost_rounds"])
            + ")"
        )
    print(
        "  slowest chunk (outside it): "
        + ", ".join(
            f"{path} {results[f'{path}_chunk_wall_seconds']:.1f} s ({results[f'{path}_outside_chunk_seconds']:.1f} s)"
            for path in args.paths
        )
        + "; daemon + code server CPU: "
        + ", ".join(f"{path} {results[f'{path}_deployment_cpu_seconds']:.1f} s" for path in args.paths)
    )
    print("  CPU seconds during the render, by process (median per kind; machine = every process on the VM):")
    for path, measured in rounds.items():
        kinds = sorted({kind for m in measured for kind in m["cpu"]})
        results[f"{path}_cpu"] = {kind: statistics.median(m["cpu"].get(kind, 0.0) for m in measured) for kind in kinds}
        print(
            f"    {path:<9} machine {results[f'{path}_machine_cpu_seconds']:5.1f}: "
            + ", ".join(f"{kind} {seconds:.1f}" for kind, seconds in results[f"{path}_cpu"].items())
        )
    if args.memory:
        print_memory(rounds, results)
    for path in args.paths:
        print(f"  where the time went, {names[path]} (median per stage, from the runs' event timestamps):")
        for label, seconds in results[f"{path}_breakdown"]:
            print(f"    {seconds:6.2f} s  {label}")
    print(json.dumps(results))
    return 0


def memory_of(memory: WorkerMemory) -> dict:
    """A round's memory figures (none without ``--memory``)."""
    if not memory.enabled:
        return {}
    return {"worker_pss": memory.peak_worker(), "deployment_pss_mb": memory.deployment}


def print_memory(rounds: dict[str, list[dict]], results: dict) -> None:
    """The peak PSS per chunk worker (median over the rounds, per kind) and of the deployment's own processes."""
    print(
        "  peak PSS per chunk (its worker's tree), MB (median per kind; "
        "deployment = daemon + fork server + code server):"
    )
    for path, measured in rounds.items():
        kinds = sorted({kind for m in measured for kind in m["worker_pss"]})
        split = {kind: statistics.median(m["worker_pss"].get(kind, 0.0) for m in measured) for kind in kinds}
        total = statistics.median(sum(m["worker_pss"].values()) for m in measured)
        results[f"{path}_worker_pss"] = {"total": total, **split}
        deployment = f", deployment {results[f'{path}_deployment_pss_mb']:.0f}" if path != "library" else ""
        print(
            f"    {path:<9} {total:5.0f}: " + ", ".join(f"{kind} {mb:.0f}" for kind, mb in split.items()) + deployment
        )


def median_breakdown(rounds: list[list[tuple[str, float]]]) -> list[tuple[str, float]]:
    """Per stage, the median over the rounds that had it (stage labels in the first round's order)."""
    labels = list(dict.fromkeys(label for round_ in rounds for label, _ in round_))
    return [
        (label, statistics.median(seconds for round_ in rounds for name, seconds in round_ if name == label))
        for label in labels
    ]


if __name__ == "__main__":
    use_this_checkout(REPO)
    sys.exit(main())
