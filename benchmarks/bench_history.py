"""Does a render cost more on an instance that has kept many renders? Empty instance against one with history.

Two instances with the repo's `dagster.yaml`, each with a running daemon (the CLI's own, as `ensure_daemon` starts
it): one empty, one holding ``--renders`` past renders (their render partitions, and a materialization of each of
their plan, chunks, concat and mixed video, written through the instance as runless events: the rows a render
leaves, without rendering them). Each round renders the same small spec through `helios-pipeline render` on both,
one after the other, so a slow spell hits both; prints the medians, their ratio, and the difference. Then, on each
instance, the CPU that an idle deployment's daemon (`python -m helios_pipeline.dagster_defs.daemon run`, with
sensors and automation, and its code server) uses over ``--idle-seconds`` once it has warmed up.

    python benchmarks/bench_history.py [--renders 5000] [--repeat 5] [--idle-seconds 30]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from checkout import use_this_checkout

REPO = Path(__file__).resolve().parents[1]
CHUNKS = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=at_least(0, int), default=5000, help="past renders kept by the second one")
    parser.add_argument("--repeat", type=at_least(1, int), default=5, help="rounds (a render on each instance each)")
    parser.add_argument("--seconds", type=at_least(0.1, float), default=4, help="length of the rendered video")
    parser.add_argument("--idle-seconds", type=at_least(0, float), default=30, help="idle CPU window (0: skip)")
    args = parser.parse_args()
    return in_scratch("helios-bench-history-", measure, args)


def in_scratch(prefix: str, measure: Callable[[argparse.Namespace, Path], int], args: argparse.Namespace) -> int:
    """``measure(args, folder)`` with a temporary folder that is removed afterwards, whatever happens."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return measure(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def at_least(low: float, kind: type) -> Callable[[str], float]:
    """An argparse type: a ``kind`` number no smaller than ``low``, else a message naming the value."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is below {low:g}")
        return value

    return parse


def measure(args: argparse.Namespace, scratch: Path) -> int:
    homes = {"empty": scratch / "empty", "history": scratch / "history"}
    started = time.perf_counter()
    for name, folder in homes.items():
        make_instance(folder, args.renders if name == "history" else 0)
    built = time.perf_counter() - started
    seconds: dict[str, list[float]] = {name: [] for name in homes}
    for index in range(args.repeat):
        for name, folder in homes.items():
            seconds[name].append(render(folder, f"round-{index}", args.seconds))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"{args.renders} past renders kept (written in {built:.0f} s); {args.repeat} rounds of a {args.seconds:g} s "
          f"320x240 render in {CHUNKS} chunks through `helios-pipeline render`, running daemon")  # fmt: skip
    for name, values in seconds.items():
        print(f"  {name:<8} median {medians[name]:5.2f} s  (rounds {', '.join(f'{v:.2f}' for v in values)})")
    print(f"  history / empty {medians['history'] / medians['empty']:.3f}, "
          f"difference {medians['history'] - medians['empty']:+.2f} s per render")  # fmt: skip
    idle = {name: idle_cpu(folder, args.idle_seconds) for name, folder in homes.items()} if args.idle_seconds else {}
    for name, cpu in idle.items():
        print(f"  idle deployment on the {name} instance: {cpu:.2f} CPU-s in {args.idle_seconds:g} s "
              f"({cpu / args.idle_seconds:.1%} of a core)")  # fmt: skip
    print(json.dumps({"renders": args.renders, "seconds": seconds, "medians": medians, "idle_cpu_seconds": idle}))
    return 0


def idle_cpu(folder: Path, seconds: float, warm_up: float = 20) -> float:
    """CPU-s the deployment's daemon and its code server use over ``seconds`` with nothing to render."""
    import psutil

    from helios_pipeline.processes import process_tree, start_group, stop_group

    command = [sys.executable, "-m", "helios_pipeline.dagster_defs.daemon", "run", "-w", "workspace.yaml"]
    daemon = start_group(command, cwd=REPO, env=environment(folder), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(warm_up)  # its imports, its code server's, the first ticks
        tree = process_tree(daemon.pid)
        used = {}
        for process in tree:
            with contextlib.suppress(psutil.Error):
                used[process.pid] = -sum(process.cpu_times()[:4])
        time.sleep(seconds)
        for process in tree:
            with contextlib.suppress(psutil.Error, KeyError):
                used[process.pid] += sum(process.cpu_times()[:4])
        return sum(value for value in used.values() if value >= 0)
    finally:
        stop_group(daemon, 10)


def environment(folder: Path) -> dict[str, str]:
    return {**os.environ, "DAGSTER_HOME": str(folder / "home"), "HELIOS_STORAGE": str(folder / "storage"),
            "HELIOS_INBOX": str(folder / "inbox"), "HELIOS_MAX_CHUNKS": str(CHUNKS)}  # fmt: skip


@contextlib.contextmanager
def instance_of(folder: Path) -> Iterator:
    """This process's environment pointed at ``folder``'s instance while in the block."""
    saved = dict(os.environ)
    os.environ.update(environment(folder))
    try:
        from helios_pipeline.dagster_defs.runner import get_instance

        with get_instance() as instance:
            yield instance
    finally:
        os.environ.clear()
        os.environ.update(saved)


def make_instance(folder: Path, renders: int) -> None:
    """An instance under ``folder`` holding ``renders`` past renders' partitions and materializations."""
    import dagster as dg

    from helios_pipeline.dagster_defs.names import CHUNK_ASSET, CONCAT_ASSET, MIXED_ASSET, PLAN_ASSET, RENDERS
    from helios_pipeline.dagster_defs.partitions import chunk_partition

    (folder / "home").mkdir(parents=True)
    (folder / "inbox").mkdir()
    shutil.copy(REPO / "dagster.yaml", folder / "home" / "dagster.yaml")
    with instance_of(folder) as instance:
        keys = [f"past-{index:06d}" for index in range(renders)]
        if keys:
            instance.add_dynamic_partitions(RENDERS, keys)
        for key in keys:
            events = [(PLAN_ASSET, key), *((CHUNK_ASSET, str(chunk_partition(key, c))) for c in range(CHUNKS)),
                      (CONCAT_ASSET, key), (MIXED_ASSET, key)]  # fmt: skip
            for asset, partition in events:
                instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=partition))


def promo_spec(folder: Path, name: str, seconds: float, width: int, height: int) -> Path:
    """A spec file in ``folder`` rendering the example composition for ``seconds`` in ``CHUNKS`` chunks."""
    spec = folder / f"{name}.json"
    spec.write_text(json.dumps({
        "name": name, "composition": str(REPO / "examples" / "promo" / "index.html"),
        "output": str(folder / "out" / f"{name}.mp4"), "width": width, "height": height, "fps": 30,
        "duration_in_seconds": seconds, "concurrency": CHUNKS,
    }), encoding="utf-8")  # fmt: skip
    return spec


def render(folder: Path, name: str, seconds: float) -> float:
    """`helios-pipeline render` of a small spec on ``folder``'s instance with its daemon running: wall seconds."""
    from helios_pipeline.dagster_defs.runner import ensure_daemon

    spec = promo_spec(folder, name, seconds, 320, 240)
    command = [sys.executable, "-m", "helios_pipeline.cli", "render", str(spec), "-q"]
    with instance_of(folder) as instance, ensure_daemon(instance):
        time.sleep(3)  # a running deployment: its first loops have gone round
        started = time.perf_counter()
        finished = subprocess.run(command, cwd=REPO, env=environment(folder), capture_output=True, text=True)
        took = time.perf_counter() - started
    if finished.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {finished.returncode}:\n{finished.stderr}")
    return took


if __name__ == "__main__":
    use_this_checkout(REPO)
    sys.exit(main())
