"""Canvas mode against DOM mode on the same canvas composition, from one run.

Renders benchmarks/compositions/canvas_1080p (a canvas redrawn every frame) at 1920x1080, 30 fps,
in one chunk, three ways per round:
- DOM mode: a screenshot per frame, encoded with libx264 (--preset);
- canvas mode: WebCodecs in the page, the stream re-encoded with the same libx264 settings;
- canvas mode with `video_codec: copy`: the WebCodecs stream kept as it is.
Prints frames/s of each (capture loop and end to end) and the ratios canvas/DOM (target: >= 2 at
1080p). With --repeat R the three renders run R times, interleaved, and medians are reported.

    python benchmarks/bench_canvas.py [--repeat 3] [--frames 150] [--preset veryfast]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPOSITION = REPO / "benchmarks" / "compositions" / "canvas_1080p" / "index.html"
PATHS = {"dom": {"mode": "dom"}, "canvas": {"mode": "canvas"}, "canvas_copy": {"mode": "canvas", "video_codec": "copy"}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--preset", default="veryfast", help="libx264 preset of the DOM and canvas re-encodes")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the three renders; medians are reported")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from helios_pipeline.orchestrator import RenderOrchestrator

    measured: dict[str, list[dict[str, float]]] = {path: [] for path in PATHS}
    methods: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="helios-bench-canvas-") as scratch:
        for _round in range(args.repeat):
            for path, options in PATHS.items():
                started = time.perf_counter()
                result = RenderOrchestrator.render(
                    str(COMPOSITION), Path(scratch) / f"{path}.mp4", width=args.width, height=args.height, fps=30,
                    frame_count=args.frames, concurrency=1, preset=args.preset, **options,
                )  # fmt: skip
                wall = time.perf_counter() - started
                chunk = result.chunks[0]
                measured[path].append(
                    {"wall_fps": args.frames / wall, "capture_fps": chunk.capture_fps,
                     "encode_tail_seconds": chunk.encode_seconds, "encode_cpu_seconds": chunk.encode_cpu_seconds}
                )  # fmt: skip
                methods[path] = chunk.capture_method
    results: dict[str, float | str] = {"repeat": args.repeat, "frames": args.frames, "preset": args.preset}
    for path, rounds in measured.items():
        for field in rounds[0]:
            results[f"{path}_{field}"] = statistics.median(r[field] for r in rounds)
        results[f"{path}_method"] = methods[path]
    for path in ("canvas", "canvas_copy"):
        for kind in ("capture", "wall"):
            results[f"{path}_ratio_{kind}"] = float(results[f"{path}_{kind}_fps"]) / float(results[f"dom_{kind}_fps"])

    print(f"{args.width}x{args.height}, {args.frames} frames, 1 chunk, libx264 {args.preset}, medians of {args.repeat}")
    for path in PATHS:
        line = (
            f"  {path:<12} {results[f'{path}_capture_fps']:6.1f} fps capture  {results[f'{path}_wall_fps']:6.1f} fps "
            f"end to end  encode tail {results[f'{path}_encode_tail_seconds']:4.1f} s  ({results[f'{path}_method']})"
        )
        if path != "dom":
            line += f"  vs DOM: {results[f'{path}_ratio_capture']:.2f}x capture, {results[f'{path}_ratio_wall']:.2f}x"
        print(line)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
