"""Canvas mode against DOM mode on the same canvas composition, from one run.

Renders benchmarks/compositions/canvas_1080p (a canvas redrawn every frame) at 1920x1080, 30 fps,
in one chunk, once in DOM mode (a screenshot per frame) and once in canvas mode (WebCodecs in the
page), and prints frames/s of each and the ratio canvas/DOM (target: >= 2 at 1080p).

    python benchmarks/bench_canvas.py [--frames 150] [--preset veryfast] [--copy]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPOSITION = REPO / "benchmarks" / "compositions" / "canvas_1080p" / "index.html"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--preset", default="veryfast", help="libx264 preset of the final encode, both modes")
    parser.add_argument("--copy", action="store_true", help="canvas mode keeps the WebCodecs stream (video_codec copy)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from helios_pipeline.orchestrator import RenderOrchestrator

    results: dict[str, float | str] = {}
    with tempfile.TemporaryDirectory(prefix="helios-bench-canvas-") as scratch:
        for mode in ("dom", "canvas"):
            started = time.perf_counter()
            result = RenderOrchestrator.render(
                str(COMPOSITION), Path(scratch) / f"{mode}.mp4", width=args.width, height=args.height, fps=30,
                frame_count=args.frames, concurrency=1, mode=mode, preset=args.preset,
                **({"video_codec": "copy"} if args.copy and mode == "canvas" else {}),
            )  # fmt: skip
            wall = time.perf_counter() - started
            chunk = result.chunks[0]
            results[f"{mode}_wall_fps"] = args.frames / wall
            results[f"{mode}_capture_fps"] = chunk.capture_fps
            results[f"{mode}_method"] = chunk.capture_method
    results["ratio_capture"] = float(results["canvas_capture_fps"]) / float(results["dom_capture_fps"])
    results["ratio_wall"] = float(results["canvas_wall_fps"]) / float(results["dom_wall_fps"])
    canvas_output = "WebCodecs stream kept (copy)" if args.copy else f"libx264 {args.preset}"
    print(f"{args.width}x{args.height}, {args.frames} frames, 1 chunk")
    print(f"  output: DOM libx264 {args.preset}, canvas {canvas_output}")
    for mode in ("dom", "canvas"):
        print(
            f"  {mode:<6} {results[f'{mode}_capture_fps']:6.1f} fps capture  "
            f"{results[f'{mode}_wall_fps']:6.1f} fps end to end  ({results[f'{mode}_method']})"
        )
    print(f"  canvas/dom: {results['ratio_capture']:.2f}x capture, {results['ratio_wall']:.2f}x end to end")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
