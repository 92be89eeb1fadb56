"""Canvas mode against Helios 1.78.3's canvas renderer (default), or against our DOM mode, from one run.

``--against helios`` (default): renders benchmarks/compositions/frame_canvas_timer (a canvas that
paints its frame index) at 1280x720, 30 fps, 300 frames, with our library orchestrator and with
Helios's own ``RenderOrchestrator`` (``@helios-project/renderer`` 1.78.3, installed from the npm
registry into a temporary folder, run on the system Chromium), at concurrency 1 and 3, alternating
per round. Both encode libx264 with the same ``--preset`` (Helios's default, ultrafast) and CRF 23.
Prints wall seconds and CPU seconds (medians; CPU of every process of the render, so a loaded
machine still shows what each tool costs), the ratios Helios/ours (> 1: ours is faster) and, for
each tool, how many output frames show the right frame index.

``--against dom``: the same canvas composition (benchmarks/compositions/canvas_1080p) three ways
in one chunk: DOM mode, canvas mode re-encoded with the same libx264 settings, and canvas mode with
``video_codec: copy``; prints frames/s and the ratios canvas/DOM.

    python benchmarks/bench_canvas.py [--repeat 3] [--frames 300] [--preset ultrafast]
    python benchmarks/bench_canvas.py --against dom [--repeat 3] [--frames 150] [--preset veryfast]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from checkout import use_this_checkout

REPO = Path(__file__).resolve().parents[1]
CANVAS_1080P = REPO / "benchmarks" / "compositions" / "canvas_1080p" / "index.html"
FRAME_CANVAS = REPO / "benchmarks" / "compositions" / "frame_canvas_timer"
HELIOS_RUNNER = REPO / "benchmarks" / "peers" / "helios_canvas.mjs"
HELIOS_PACKAGES = ("@helios-project/renderer@1.78.3", "@helios-project/core@5.13.2")
DOM_PATHS = {
    "dom": {"mode": "dom"},
    "canvas": {"mode": "canvas"},
    "canvas_copy": {"mode": "canvas", "video_codec": "copy"},
}


def install_helios(folder: Path) -> None:
    """Helios's renderer from the npm registry; Playwright is told not to download browsers."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is needed to install Helios's renderer")
    env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(folder), *HELIOS_PACKAGES],
        check=True, env=env, timeout=600,
    )  # fmt: skip


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def render_helios(modules: Path, output: Path, args: argparse.Namespace, concurrency: int) -> tuple[float, float]:
    """Wall seconds of Helios's RenderOrchestrator.render (measured inside node, after its imports)
    and CPU seconds of the render (node, Chromium, FFmpeg; without node's start-up and imports)."""
    from helios_pipeline.engine.tools import chromium_path, ffmpeg_path

    options = {
        "width": args.width, "height": args.height, "fps": args.fps, "frameCount": args.frames,
        "durationInSeconds": args.frames / args.fps, "mode": "canvas", "canvasSelector": "#stage",
        "concurrency": concurrency, "preset": args.preset, "crf": 23, "ffmpegPath": ffmpeg_path(),
        "browserConfig": {"executablePath": chromium_path()},
    }  # fmt: skip
    job = {"modules": str(modules), "url": (FRAME_CANVAS / "index.html").as_uri(), "output": str(output),
           "options": options}  # fmt: skip
    cpu_before = cpu_seconds(resource.RUSAGE_CHILDREN)
    done = subprocess.run(["node", str(HELIOS_RUNNER), json.dumps(job)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"Helios's renderer failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_before - float(report["setupCpuSeconds"])
    return float(report["seconds"]), cpu


def render_ours(output: Path, args: argparse.Namespace, concurrency: int) -> tuple[float, float]:
    """Wall and CPU seconds (this process and every process it started) of one library render."""
    from helios_pipeline.orchestrator import RenderOrchestrator

    cpu_before = cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    RenderOrchestrator.render(
        str(FRAME_CANVAS), output, width=args.width, height=args.height, fps=args.fps, frame_count=args.frames,
        concurrency=concurrency, mode="canvas", canvas_selector="#stage", preset=args.preset, crf=23,
    )  # fmt: skip
    wall = time.perf_counter() - started
    return wall, cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN) - cpu_before


def right_frames(video: Path, expected: int) -> int:
    """How many frames of ``video`` show their own index (a missing frame counts as wrong)."""
    from helios_pipeline_tests.framecode import frame_indices

    return sum(1 for index, shown in enumerate(frame_indices(video)[:expected]) if index == shown)


def against_helios(args: argparse.Namespace) -> dict[str, Any]:
    seconds: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    right: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="helios-bench-canvas-") as scratch:
        modules = Path(scratch) / "npm"
        install_helios(modules)
        for _round in range(args.repeat):
            for concurrency in args.concurrency:
                for tool in ("ours", "helios"):
                    key = f"{tool}_c{concurrency}"
                    output = Path(scratch) / f"{key}.mp4"
                    output.unlink(missing_ok=True)
                    if tool == "ours":
                        wall, used = render_ours(output, args, concurrency)
                    else:
                        wall, used = render_helios(modules, output, args, concurrency)
                    seconds.setdefault(key, []).append(wall)
                    cpu.setdefault(key, []).append(used)
                    right[key] = min(right.get(key, args.frames), right_frames(output, args.frames))
    results: dict[str, Any] = {"against": "helios", "repeat": args.repeat, "frames": args.frames,
                               "size": f"{args.width}x{args.height}", "preset": args.preset,
                               "load_average_1min": os.getloadavg()[0]}  # fmt: skip
    print(f"{args.width}x{args.height}, {args.frames} frames, libx264 {args.preset} crf 23, medians of {args.repeat}")
    for concurrency in args.concurrency:
        ours, helios = (statistics.median(seconds[f"{tool}_c{concurrency}"]) for tool in ("ours", "helios"))
        ours_cpu, helios_cpu = (statistics.median(cpu[f"{tool}_c{concurrency}"]) for tool in ("ours", "helios"))
        results[f"ours_c{concurrency}_seconds"] = ours
        results[f"helios_c{concurrency}_seconds"] = helios
        results[f"ratio_c{concurrency}"] = helios / ours
        results[f"ours_c{concurrency}_cpu_seconds"] = ours_cpu
        results[f"helios_c{concurrency}_cpu_seconds"] = helios_cpu
        results[f"ours_c{concurrency}_right_frames"] = right[f"ours_c{concurrency}"]
        results[f"helios_c{concurrency}_right_frames"] = right[f"helios_c{concurrency}"]
        ours_right, helios_right = right[f"ours_c{concurrency}"], right[f"helios_c{concurrency}"]
        print(
            f"  c{concurrency}: ours {ours:5.2f} s, {ours_cpu:5.2f} CPU-s ({ours_right}/{args.frames} frames right)  "
            f"Helios {helios:5.2f} s, {helios_cpu:5.2f} CPU-s ({helios_right}/{args.frames} right)  "
            f"Helios/ours {helios / ours:.2f}x wall, {helios_cpu / ours_cpu:.2f}x CPU"
        )
    for name, table in (("wall", seconds), ("cpu", cpu)):
        rounds = {key: [round(value, 2) for value in values] for key, values in table.items()}
        print(f"  {name} per round: {json.dumps(rounds)}")
    return results


def against_dom(args: argparse.Namespace) -> dict[str, Any]:
    from helios_pipeline.orchestrator import RenderOrchestrator

    measured: dict[str, list[dict[str, float]]] = {path: [] for path in DOM_PATHS}
    methods: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="helios-bench-canvas-") as scratch:
        for _round in range(args.repeat):
            for path, options in DOM_PATHS.items():
                started = time.perf_counter()
                result = RenderOrchestrator.render(
                    str(CANVAS_1080P), Path(scratch) / f"{path}.mp4", width=args.width, height=args.height,
                    fps=args.fps, frame_count=args.frames, concurrency=1, preset=args.preset, **options,
                )  # fmt: skip
                wall = time.perf_counter() - started
                chunk = result.chunks[0]
                measured[path].append(
                    {"wall_fps": args.frames / wall, "capture_fps": chunk.capture_fps,
                     "encode_tail_seconds": chunk.encode_seconds, "encode_cpu_seconds": chunk.encode_cpu_seconds}
                )  # fmt: skip
                methods[path] = chunk.capture_method
    results: dict[str, Any] = {"against": "dom", "repeat": args.repeat, "frames": args.frames, "preset": args.preset}
    for path, rounds in measured.items():
        for field in rounds[0]:
            results[f"{path}_{field}"] = statistics.median(r[field] for r in rounds)
        results[f"{path}_method"] = methods[path]
    for path in ("canvas", "canvas_copy"):
        for kind in ("capture", "wall"):
            results[f"{path}_ratio_{kind}"] = float(results[f"{path}_{kind}_fps"]) / float(results[f"dom_{kind}_fps"])

    print(f"{args.width}x{args.height}, {args.frames} frames, 1 chunk, libx264 {args.preset}, medians of {args.repeat}")
    for path in DOM_PATHS:
        line = (
            f"  {path:<12} {results[f'{path}_capture_fps']:6.1f} fps capture  {results[f'{path}_wall_fps']:6.1f} fps "
            f"end to end  encode tail {results[f'{path}_encode_tail_seconds']:4.1f} s  ({results[f'{path}_method']})"
        )
        if path != "dom":
            line += f"  vs DOM: {results[f'{path}_ratio_capture']:.2f}x capture, {results[f'{path}_ratio_wall']:.2f}x"
        print(line)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", choices=("helios", "dom"), default="helios")
    parser.add_argument("--frames", type=int, help="default: 300 against Helios, 150 against DOM mode")
    parser.add_argument("--width", type=int, help="default: 1280 against Helios, 1920 against DOM mode")
    parser.add_argument("--height", type=int, help="default: 720 against Helios, 1080 against DOM mode")
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--preset", help="libx264 preset; default: ultrafast against Helios, veryfast against DOM")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 3], help="against Helios: chunk counts")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (interleaved); medians are reported")
    args = parser.parse_args()
    helios = args.against == "helios"
    args.frames = args.frames or (300 if helios else 150)
    args.width = args.width or (1280 if helios else 1920)
    args.height = args.height or (720 if helios else 1080)
    args.preset = args.preset or ("ultrafast" if helios else "veryfast")
    use_this_checkout(REPO)
    results = against_helios(args) if helios else against_dom(args)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
