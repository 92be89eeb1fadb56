"""A render during the daemon's minute workspace refresh, against one clear of it, with a running deployment.

Dagster's daemon refreshes its workspace every minute (``RELOAD_WORKSPACE_INTERVAL``); Dagster's refresh replaces
the code server it manages, the project's only when the code location changed (``code_signature.py``). Each round
starts a fresh daemon (`python -m helios_pipeline.dagster_defs.daemon run -w workspace.yaml`, sensors and automation
included) on one instance twice: once rendering ``--clear-at`` seconds after the daemon's start (its first refresh is
due at 60 s), once ``--during-at`` seconds after it, so that the refresh falls inside the render. The same spec
renders through `helios-pipeline render` both times. Printed: the medians, their ratio, and per render the code
servers started while it ran and the CPU they and the daemon used meanwhile.

    python benchmarks/bench_refresh.py [--repeat 3] [--seconds 20]

To compare two commits, run each copy's own script (see ``checkout.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_history import CHUNKS, at_least, environment, in_scratch, promo_spec
from checkout import use_this_checkout

REPO = Path(__file__).resolve().parents[1]
SERVER_MARK = "api grpc"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    number, count = at_least(0.1, float), at_least(1, int)
    parser.add_argument("--repeat", type=count, default=3, help="rounds: a render clear of the refresh, one during it")
    parser.add_argument("--seconds", type=number, default=20, help="length of the rendered 1280x720 video")
    parser.add_argument("--clear-at", type=number, default=8, help="render this long after the daemon's start")
    parser.add_argument("--during-at", type=number, default=50, help="render this long after it (refresh due at 60 s)")
    args = parser.parse_args()
    return in_scratch("helios-bench-refresh-", measure, args)


def measure(args: argparse.Namespace, scratch: Path) -> int:
    (scratch / "home").mkdir()
    (scratch / "inbox").mkdir()
    shutil.copy(REPO / "dagster.yaml", scratch / "home" / "dagster.yaml")
    results: dict[str, list[dict[str, float]]] = {"clear": [], "during": []}
    for index in range(args.repeat):
        for when, delay in (("clear", args.clear_at), ("during", args.during_at)):
            results[when].append(render_after(scratch, f"r{index}-{when}", delay, args.seconds))
            print(f"round {index + 1} {when:<6} {results[when][-1]}", file=sys.stderr)
    medians = {when: statistics.median(item["seconds"] for item in items) for when, items in results.items()}
    print(f"{args.repeat} rounds of a {args.seconds:g} s 1280x720 render in {CHUNKS} chunks through "
          f"`helios-pipeline render`, a fresh daemon each time (its refresh due at 60 s)")  # fmt: skip
    for when, items in results.items():
        rounds = ", ".join(f"{item['seconds']:.2f}" for item in items)
        servers = ", ".join(str(int(item["servers_started"])) for item in items)
        cpu = ", ".join(f"{item['deployment_cpu']:.1f}" for item in items)
        print(f"  {when:<6} median {medians[when]:5.2f} s (rounds {rounds}); code servers started during it: "
              f"{servers}; daemon + code servers CPU-s during it: {cpu}")  # fmt: skip
    print(f"  during / clear {medians['during'] / medians['clear']:.3f}, "
          f"difference {medians['during'] - medians['clear']:+.2f} s")  # fmt: skip
    print(json.dumps({"repeat": args.repeat, "seconds": args.seconds, "medians": medians, "rounds": results}))
    return 0


def render_after(folder: Path, name: str, delay: float, seconds: float) -> dict[str, float]:
    """Start a daemon, render ``delay`` seconds after its start; the render's wall seconds, the code servers started
    while it ran, and the CPU the daemon's tree (without run workers, browsers and encoders) used meanwhile."""
    import psutil

    from helios_pipeline.processes import start_group, stop_group

    spec = promo_spec(folder, name, seconds, 1280, 720)
    env = environment(folder)
    command = [sys.executable, "-m", "helios_pipeline.dagster_defs.daemon", "run", "-w", "workspace.yaml"]
    daemon = start_group(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(max(0.0, delay - (time.time() - psutil.Process(daemon.pid).create_time())))
        before = _deployment_cpu(daemon.pid)
        started = time.perf_counter()
        render_started = time.time()
        finished = subprocess.run([sys.executable, "-m", "helios_pipeline.cli", "render", str(spec), "-q"],
                                  cwd=REPO, env=env, capture_output=True, text=True)  # fmt: skip
        took = time.perf_counter() - started
        after = _deployment_cpu(daemon.pid)
        servers = [
            process
            for process in psutil.Process(daemon.pid).children(recursive=True)
            if SERVER_MARK in " ".join(_cmdline(process)) and process.create_time() >= render_started
        ]
    finally:
        stop_group(daemon, 10)
    if finished.returncode != 0:
        raise SystemExit(f"helios-pipeline render {spec} exited {finished.returncode}:\n{finished.stderr}")
    used = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
    return {"seconds": round(took, 3), "servers_started": len(servers), "deployment_cpu": round(used, 2)}


def _cmdline(process) -> list[str]:
    import psutil

    with contextlib.suppress(psutil.Error):
        return process.cmdline()
    return []


def _deployment_cpu(pid: int) -> dict[int, float]:
    """CPU-s so far of the daemon and its code servers (not its fork server's run workers and their children)."""
    import psutil

    found = {}
    daemon = psutil.Process(pid)
    for process in [daemon, *daemon.children()]:
        if process.pid == pid or SERVER_MARK in " ".join(_cmdline(process)):
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                found[process.pid] = times.user + times.system
    return found


if __name__ == "__main__":
    use_this_checkout(REPO)
    sys.exit(main())
