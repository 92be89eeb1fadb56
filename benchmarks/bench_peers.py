#!/usr/bin/env python3
"""Peer benchmark: timecut 0.3.3 against ``helios-pipeline render --local`` on a requestAnimationFrame page.

timecut (npm, puppeteer 2.1.1) is installed into a temporary folder for the run, never committed,
and pointed at the same Chromium the engine uses (``--executable-path``; PUPPETEER_SKIP_DOWNLOAD so
nothing is downloaded). Both tools render ``compositions/raf_720p`` (a plain rAF page, what timecut
is made for) at 1280x720, 30 fps, to an H.264 mp4 with the same FFmpeg, timed end to end as
subprocesses: process start, browser start, capture, encode, until the video file is complete.

Ours runs twice per round, with the automatic DOM capture (BeginFrame on chromium-headless-shell)
and with ``HELIOS_DOM_CAPTURE=screenshot`` (the ``Page.captureScreenshot`` path). Rounds alternate
the three, medians are reported, ratios are timecut's wall time over ours, taken inside each round.
The 1-minute load average is printed after each render. The last line of stdout is the report as JSON.

Run: ``python benchmarks/bench_peers.py [--frames 300] [--repeat 3] [--concurrency 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from helios_pipeline.engine.capture_setting import DOM_CAPTURE_ENV
from helios_pipeline.engine.probe import count_video_frames
from helios_pipeline.engine.tools import chromium_path, ffmpeg_path

HERE = Path(__file__).resolve().parent
COMPOSITION = HERE / "compositions" / "raf_720p" / "index.html"
TIMECUT = "timecut@0.3.3"
WIDTH, HEIGHT, FPS = 1280, 720, 30
RATIO_TARGET = 2.0
OURS_CLI = "import sys; from helios_pipeline.cli import main; sys.exit(main())"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def install_timecut(folder: Path) -> Path:
    """``npm install timecut`` into ``folder`` without puppeteer's browser download; returns its cli.js."""
    env = {**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1", "PUPPETEER_SKIP_CHROMIUM_DOWNLOAD": "1"}
    command = ["npm", "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--loglevel=error", TIMECUT]
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, timeout=600)
    return folder / "node_modules" / "timecut" / "cli.js"


def timecut_command(cli: Path, output: Path, frames: int) -> list[str]:
    """timecut at its fastest correct settings: frames piped to FFmpeg (no frame files), the same Chromium."""
    launch = "--no-sandbox" if os.geteuid() == 0 else ""
    return [
        "node", str(cli), str(COMPOSITION), f"--viewport={WIDTH},{HEIGHT}", f"--fps={FPS}", f"--frames={frames}",
        f"--executable-path={chromium_path()}", f"--launch-arguments={launch}", f"--ffmpeg-path={ffmpeg_path()}",
        "--pipe-mode", "--pix-fmt=yuv420p", "--quiet", f"--output={output}",
    ]  # fmt: skip


def ours_command(output: Path, frames: int, concurrency: int) -> list[str]:
    return [
        sys.executable, "-c", OURS_CLI, "render", str(COMPOSITION), "--local", "-o", str(output),
        "--width", str(WIDTH), "--height", str(HEIGHT), "--fps", str(FPS), "--frames", str(frames),
        "--concurrency", str(concurrency),
    ]  # fmt: skip


def timed_render(command: list[str], output: Path, frames: int, env: dict[str, str]) -> dict[str, Any]:
    """Run one render to completion; its wall time, the frames it wrote, and what it printed last."""
    output.unlink(missing_ok=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    written = count_video_frames(output)
    if written != frames:
        raise RuntimeError(f"{output.name}: {written} frames, expected {frames}")
    return {"wall_s": round(wall, 3), "fps": round(frames / wall, 2), "load1_after": load1(), "stderr": done.stderr}


def capture_method(stderr: str) -> str:
    """The capture method the CLI's done line names (``..., 2 chunks, dom/beginframe/jpeg)``)."""
    found = re.search(r"chunks?, ([^)]+)\)", stderr)
    return found.group(1) if found else "?"


def run_round(cli: Path, work: Path, args: argparse.Namespace, rnd: int) -> dict[str, Any]:
    base_env = {key: value for key, value in os.environ.items() if key != DOM_CAPTURE_ENV}
    order = ["timecut", "ours_auto", "ours_screenshot"]
    order = order[rnd % 3 :] + order[: rnd % 3]  # who goes first changes every round
    out: dict[str, Any] = {"round": rnd}
    for name in order:
        output = work / f"{name}.mp4"
        if name == "timecut":
            result = timed_render(timecut_command(cli, output, args.frames), output, args.frames, base_env)
            result["method"] = "puppeteer screenshot (PNG)"
        else:
            env = dict(base_env)
            if name == "ours_screenshot":
                env[DOM_CAPTURE_ENV] = "screenshot"
            result = timed_render(ours_command(output, args.frames, args.concurrency), output, args.frames, env)
            result["method"] = capture_method(result["stderr"])
        result.pop("stderr")
        log(f"[round {rnd}] {name:<16} {result['wall_s']:6.2f} s  {result['fps']:6.2f} fps  {result['method']}"
            f"  (load {result['load1_after']})")  # fmt: skip
        out[name] = result
    out["timecut_over_ours_auto"] = round(out["timecut"]["wall_s"] / out["ours_auto"]["wall_s"], 3)
    out["timecut_over_ours_screenshot"] = round(out["timecut"]["wall_s"] / out["ours_screenshot"]["wall_s"], 3)
    out["screenshot_over_auto"] = round(out["ours_screenshot"]["wall_s"] / out["ours_auto"]["wall_s"], 3)
    return out


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def median(key: str, field: str | None = None) -> float:
        return round(statistics.median(r[key][field] if field else r[key] for r in rounds), 3)

    summary: dict[str, Any] = {
        f"{name}_wall_s": median(name, "wall_s") for name in ("timecut", "ours_auto", "ours_screenshot")
    }
    for key in ("timecut_over_ours_auto", "timecut_over_ours_screenshot", "screenshot_over_auto"):
        summary[key] = median(key)
        summary[f"{key}_all"] = [r[key] for r in rounds]
    summary["ours_auto_method"] = rounds[0]["ours_auto"]["method"]
    summary["meets_target"] = summary["timecut_over_ours_auto"] >= RATIO_TARGET
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="timecut vs helios-pipeline on a requestAnimationFrame page")
    parser.add_argument("--frames", type=int, default=300, help="frames per render (default 300: 10 s)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3); medians are reported")
    parser.add_argument("--concurrency", type=int, default=2, help="our chunks rendered at once (default 2)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    env = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "chromium": chromium_path(),
        "ffmpeg": ffmpeg_path(),
        "node": subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip(),
    }
    with tempfile.TemporaryDirectory(prefix="helios-peers-") as tmp:
        work = Path(tmp)
        log(f"installing {TIMECUT} into {work} (no browser download) ...")
        cli = install_timecut(work / "timecut")
        rounds = [run_round(cli, work, args, rnd) for rnd in range(1, args.repeat + 1)]
    summary = summarise(rounds)
    report = {
        "benchmark": "peers: timecut vs helios-pipeline render --local",
        "environment": env,
        "config": {"composition": str(COMPOSITION), "width": WIDTH, "height": HEIGHT, "fps": FPS, **vars(args)},
        "summary": summary,
        "rounds": rounds,
    }
    print(f"{args.frames} frames {WIDTH}x{HEIGHT} @ {FPS} fps, rAF page; load at start {env['loadavg_at_start']}")
    print(f"  timecut 0.3.3                     {summary['timecut_wall_s']:7.2f} s")
    print(f"  ours, {summary['ours_auto_method']:<27} {summary['ours_auto_wall_s']:7.2f} s (c{args.concurrency})")
    print(f"  ours, HELIOS_DOM_CAPTURE=screenshot {summary['ours_screenshot_wall_s']:7.2f} s")
    verdict = "meets" if summary["meets_target"] else "MISSES"
    print(
        f"  timecut/ours: {summary['timecut_over_ours_auto']:.2f}x ({verdict} target >= {RATIO_TARGET}) "
        f"{summary['timecut_over_ours_auto_all']}; with screenshots {summary['timecut_over_ours_screenshot']:.2f}x"
    )
    line = json.dumps(report, default=str)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
