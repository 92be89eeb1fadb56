#!/usr/bin/env python3
"""Network policy benchmark: what the egress gate costs per frame, policy on vs off, in one run.

Renders the same chunk with the default policy (every connection of the page through the
chunk's loopback SOCKS5 gate) and with ``network: {mode: open}`` (no gate, as before the
policy existed), for two pages:

* quiet     the standard 1080p benchmark page (no request after load): the target is no slow-down;
* requests  a page that loads a new picture from its own server in every frame (``?frame=N``,
            ``Cache-Control: no-store``), so every frame makes one HTTP request through the gate.

Two figures per frame: capture wall time from the chunks' own ``ChunkResult`` (browser start and
page load excluded), and the CPU time of the whole chunk (this process with the gate's threads,
Chromium and FFmpeg, from ``getrusage``; it includes start-up, which is the
same with and without the gate), which a busy machine disturbs far less than wall time. Runs
alternate on/off and ``--repeat R`` reports medians. The last line of stdout is the whole report
as one JSON object.

Run: ``python benchmarks/bench_network.py [--frames 90] [--width 1280 --height 720] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

from helios_pipeline.engine.chunk import render_chunk
from helios_pipeline.network import ENV_VAR
from helios_pipeline.plan import RenderChunk
from helios_pipeline.spec import validate_spec

HERE = Path(__file__).resolve().parent
QUIET_PAGE = HERE / "compositions" / "standard_1080p" / "index.html"
REQUESTS_PAGE = """<!doctype html><html><body style="margin:0;background:#123">
<img id="dot" style="width:50vw;height:50vh">
<script>
  function tick() {
    const frame = Math.round(performance.now() * __FPS__ / 1000);
    document.getElementById("dot").src = "dot.png?frame=" + frame;
    requestAnimationFrame(tick);
  }
  requestAnimationFrame(tick);
</script></body></html>"""


def dot_png() -> bytes:
    """A 1x1 PNG, so that the request and not the decoding is what a frame pays for."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))

    header = struct.pack("!IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\xcc\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


POLICIES = {"on": None, "off": {"mode": "open"}}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def requests_page(folder: Path, fps: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dot.png").write_bytes(dot_png())
    page = folder / "index.html"
    page.write_text(REQUESTS_PAGE.replace("__FPS__", repr(fps)), encoding="utf-8")
    return page


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (Chromium or its wrapper script; FFmpeg)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def per_frame_ms(
    page: Path, policy: dict[str, Any] | None, args: argparse.Namespace, work: Path
) -> tuple[float, float]:
    """Capture wall ms and whole-chunk CPU ms per frame of one chunk rendered with ``policy``."""
    data: dict[str, Any] = {
        "composition": str(page), "width": args.width, "height": args.height, "fps": args.fps,
        "frame_count": args.frames, "preset": "ultrafast", "network": policy,
    }  # fmt: skip
    spec = validate_spec(data, base_dir=work, source="bench_network")
    output = work / "chunk.mov"
    cpu_before = cpu_seconds()
    result = render_chunk(spec, RenderChunk(id=0, start_frame=0, frame_count=args.frames, output_file=output))
    output.unlink()
    if result.blocked_requests:
        raise SystemExit(f"the benchmark page was refused requests: {result.blocked_urls}")
    return result.capture_seconds * 1000 / args.frames, (cpu_seconds() - cpu_before) * 1000 / args.frames


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.pop(ENV_VAR, None)  # the spec's policy only: on = default (gate), off = open (no gate)
    with tempfile.TemporaryDirectory(prefix="bench_network_") as temp:
        work = Path(temp)
        pages = {"quiet": QUIET_PAGE, "requests": requests_page(work / "requests", args.fps)}
        samples: dict[str, dict[str, list[tuple[float, float]]]] = {name: {"on": [], "off": []} for name in pages}
        for repetition in range(args.repeat):
            for name, page in pages.items():
                order = ("on", "off") if repetition % 2 == 0 else ("off", "on")
                for policy in order:
                    wall, cpu = per_frame_ms(page, POLICIES[policy], args, work)
                    samples[name][policy].append((wall, cpu))
                    log(f"[{repetition + 1}/{args.repeat}] {name:8} policy {policy:3}: {wall:6.2f} ms/frame "
                        f"capture, {cpu:6.2f} ms/frame CPU")  # fmt: skip
    report: dict[str, Any] = {"frames": args.frames, "size": f"{args.width}x{args.height}", "repeat": args.repeat}
    print(f"{'page':10} {'figure':14} {'policy off':>12} {'policy on':>12} {'on/off':>8} {'extra':>10}")
    for name, by_policy in samples.items():
        report[name] = {}
        for index, figure in enumerate(("capture", "cpu")):
            off_values = [sample[index] for sample in by_policy["off"]]
            on_values = [sample[index] for sample in by_policy["on"]]
            off, on = statistics.median(off_values), statistics.median(on_values)
            ratios = [a / b for a, b in zip(on_values, off_values, strict=True)]
            report[name][figure] = {
                "off_ms_per_frame": round(off, 2), "on_ms_per_frame": round(on, 2),
                "ratio_on_off": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios],
                "extra_ms_per_frame": round(on - off, 2),
            }  # fmt: skip
            ratio = report[name][figure]["ratio_on_off"]
            print(f"{name:10} {figure + ' ms/frame':14} {off:9.2f} ms {on:9.2f} ms {ratio:8.3f} {on - off:7.2f} ms")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
