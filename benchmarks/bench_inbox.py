"""A render started by the inbox: from the spec's arrival to its finished video, with a running deployment.

Starts the project's daemon (`python -m helios_pipeline.dagster_defs.daemon run -w workspace.yaml`: the inbox sensor,
the planning sensor and automation, every ``HELIOS_TRIGGER_SECONDS``, default 5) on a fresh instance, then moves one
spec after another into its inbox and times each until its ``mixed_video`` is recorded. No CLI and no backfill: the
sensors register and plan the render, automation runs its chunks and then its concat + mix, each stage waiting for
the next tick. Also printed: the gaps between the ticks of each sensor over the whole run.

    python benchmarks/bench_inbox.py [--renders 3] [--seconds 4]

To compare two commits, run each copy's own script (see ``checkout.py``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_history import at_least, environment, in_scratch, instance_of, promo_spec
from checkout import use_this_checkout

REPO = Path(__file__).resolve().parents[1]
WARM_UP_SECONDS = 15
RENDER_TIMEOUT_SECONDS = 300


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=at_least(1, int), default=3, help="specs moved into the inbox, one by one")
    parser.add_argument("--seconds", type=at_least(0.1, float), default=4, help="length of each 320x240 video")
    args = parser.parse_args()
    return in_scratch("helios-bench-inbox-", measure, args)


def measure(args: argparse.Namespace, scratch: Path) -> int:
    from helios_pipeline.processes import start_group, stop_group

    for folder in ("home", "inbox", "specs"):
        (scratch / folder).mkdir()
    shutil.copy(REPO / "dagster.yaml", scratch / "home" / "dagster.yaml")
    command = [sys.executable, "-m", "helios_pipeline.dagster_defs.daemon", "run", "-w", "workspace.yaml"]
    daemon = start_group(command, cwd=REPO, env=environment(scratch), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)  # fmt: skip
    walls: list[float] = []
    try:
        time.sleep(WARM_UP_SECONDS)  # its imports, its code server's, the sensors' first ticks
        for index in range(args.renders):
            walls.append(render_through_the_inbox(scratch, f"inbox-{index}", args.seconds))
            print(f"render {index + 1}: {walls[-1]:.2f} s", file=sys.stderr)
    finally:
        stop_group(daemon, 10)
    gaps = tick_gaps(scratch)
    trigger = os.environ.get("HELIOS_TRIGGER_SECONDS", "5")
    print(f"{args.renders} renders of a {args.seconds:g} s 320x240 spec moved into the inbox of a running deployment "
          f"(HELIOS_TRIGGER_SECONDS={trigger}), spec to recorded video:")  # fmt: skip
    print(f"  median {statistics.median(walls):.2f} s (renders {', '.join(f'{wall:.2f}' for wall in walls)})")
    for sensor, values in gaps.items():
        print(f"  {sensor:<24} {len(values) + 1} ticks, gaps median {statistics.median(values):.2f} s, "
              f"max {max(values):.2f} s")  # fmt: skip
    print(json.dumps({"renders": args.renders, "seconds": args.seconds, "walls": walls, "tick_gaps": gaps}))
    return 0


def render_through_the_inbox(folder: Path, name: str, seconds: float) -> float:
    """Move a spec into the inbox (whole, by a rename) and wait for its ``mixed_video``: wall seconds."""
    import dagster as dg

    from helios_pipeline.dagster_defs.names import MIXED_ASSET

    spec = promo_spec(folder / "specs", name, seconds, 320, 240)
    with instance_of(folder) as instance:
        started = time.perf_counter()
        os.replace(spec, folder / "inbox" / spec.name)
        deadline = started + RENDER_TIMEOUT_SECONDS
        while time.perf_counter() < deadline:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=MIXED_ASSET, asset_partitions=[name]), limit=1
            ).records
            if records:
                return time.perf_counter() - started
            time.sleep(0.05)
    raise SystemExit(f"{name}: no mixed_video recorded within {RENDER_TIMEOUT_SECONDS} s of its spec's arrival")


def tick_gaps(folder: Path) -> dict[str, list[float]]:
    """Seconds between the consecutive ticks of each sensor of the instance."""
    with instance_of(folder) as instance:
        gaps = {}
        for state in instance.all_instigator_state():
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=10_000)
            times = sorted(tick.timestamp for tick in ticks)
            if len(times) > 1:
                gaps[state.instigator_name] = [round(b - a, 2) for a, b in itertools.pairwise(times)]
        return gaps


if __name__ == "__main__":
    use_this_checkout(REPO)
    sys.exit(main())
