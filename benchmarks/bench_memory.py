#!/usr/bin/env python3
"""Chromium's memory by process type, per set of launch flags, with every frame compared.

For each variant of launch flags it starts one Chromium the engine's way (``launch_browser``, driven over its
DevTools pipe), opens the render page (``new_render_page``, ``load_composition``), seeks and screenshots
``--frames`` frames as chunks do (``dom_capture``: BeginFrame where the browser has it, else
screenshots; the method is in the report), and samples the PSS of every process every ~0.25 s. A process's
type comes from its command line: Chromium's ``--type=``
(``renderer``, ``gpu-process``, ``zygote``, ``utility`` with its ``--utility-sub-type``: network,
storage, audio...), no ``--type`` for the browser process (and a wrapper script that may run it).

Each variant's screenshots (the bytes the engine pipes to FFmpeg) are hashed and compared with
the first variant's: a flag that changes a single pixel changes a JPEG, and is reported.

Run: ``python benchmarks/bench_memory.py`` (engine flags, then each candidate on top of them),
``--variants engine no_memory_flags``, ``--extra "--flag --other"`` for an ad-hoc variant.
The last line of stdout is the whole report as one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from helios_pipeline.engine import browser as engine_browser
from helios_pipeline.engine.begin_frame import dom_capture
from helios_pipeline.engine.browser import launch_browser
from helios_pipeline.engine.page import frame_time_ms, load_composition, new_render_page
from helios_pipeline.engine.server import composition_url
from helios_pipeline.engine.tools import chromium_path
from helios_pipeline.spec import RenderSpec, resolve_spec

HERE = Path(__file__).resolve().parent
COMPOSITION = HERE / "compositions" / "standard_1080p" / "index.html"
SAMPLE_INTERVAL_S = 0.25
MB = 1024 * 1024

BASE = "base"
"""The engine's flags without its memory flags (``launch_args(memory=False)``): what each variant adds to."""
ENGINE = "engine"
"""The engine's flags as a chunk launches them (``launch_args()``)."""

CANDIDATES: dict[str, list[str]] = {
    # processes: fewer of them, each with its own heap, V8 isolate, allocator caches
    "no_zygote": ["--no-zygote"],
    "in_process_gpu": ["--in-process-gpu"],
    "single_process": ["--single-process"],
    "renderer_limit_1": ["--renderer-process-limit=1"],
    "no_spare_renderer": ["--disable-features=SpareRendererForSitePerProcess"],
    "no_site_isolation": ["--disable-site-isolation-trials", "--disable-features=IsolateOrigins,SitePerProcess"],
    "process_per_site": ["--process-per-site"],
    # the renderer's V8 and caches
    "v8_small_heap": ["--js-flags=--max-old-space-size=64 --max-semi-space-size=1"],
    "v8_lite": ["--js-flags=--lite-mode"],
    "caches_small": ["--disk-cache-size=1", "--media-cache-size=1", "--aggressive-cache-discard"],
    # raster and compositing
    "raster_threads_1": ["--num-raster-threads=1"],
    "low_end_device": ["--enable-low-end-device-mode"],
    "gpu_mem_64": ["--force-gpu-mem-available-mb=64"],
    "no_gpu_rasterization": ["--disable-gpu-rasterization", "--disable-gpu-compositing"],
    "no_swiftshader": ["--disable-software-rasterizer"],
    "legacy_screenshot": ["--disable-features=CDPScreenshotNewSurface"],
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def merge_features(args: list[str]) -> list[str]:
    """One ``--disable-features`` / ``--enable-features`` switch each: Chromium keeps only the last of a switch."""
    merged: dict[str, list[str]] = {}
    rest = []
    for arg in args:
        name, _, value = arg.partition("=")
        if name in ("--disable-features", "--enable-features"):
            merged.setdefault(name, []).extend(v for v in value.split(",") if v and v not in merged.get(name, []))
        else:
            rest.append(arg)
    return rest + [f"{name}={','.join(values)}" for name, values in merged.items()]


def variant_args(name: str, extra: list[str]) -> list[str]:
    if name == ENGINE:
        return engine_browser.launch_args(begin_frame_control=True)
    base = engine_browser.launch_args(begin_frame_control=True, memory=False)
    return merge_features([*base, *CANDIDATES.get(name, []), *extra])


# -- process types -----------------------------------------------------------------------------------


def process_type(process: psutil.Process) -> str:
    """``browser``, ``renderer``, ``gpu``, ``zygote``, ``network``/``storage``/... (utilities), ``other``."""
    name = process.name().lower()
    if "chrom" not in name and "headless" not in name:
        return "other"
    cmdline = process.cmdline()
    switches = dict(arg[2:].partition("=")[::2] for arg in cmdline if arg.startswith("--"))
    kind = switches.get("type")
    if kind is None:
        return "browser"
    if kind == "utility":
        sub = switches.get("utility-sub-type", "")
        return {"network.mojom.NetworkService": "network", "storage.mojom.StorageService": "storage"}.get(
            sub, "utility:" + sub.split(".")[0]
        )
    return {"gpu-process": "gpu"}.get(kind, kind)


@dataclass
class Peaks:
    """The largest summed PSS seen, with its split by process type, and each type's own largest PSS."""

    total: int = 0
    uss_at_total: int = 0
    """Private memory (USS) at that sample: unlike PSS, it does not move with what else maps the same files."""
    at_total: dict[str, int] = field(default_factory=dict)
    by_type: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    samples: int = 0


class PssSampler:
    """Every ~0.25 s: PSS (``/proc/PID/smaps_rollup``) of each of this process's descendants, by type."""

    def __init__(self) -> None:
        self.peaks = Peaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sample(self) -> None:
        by_type: dict[str, int] = {}
        counts: dict[str, int] = {}
        uss = 0
        for process in psutil.Process().children(recursive=True):
            try:
                kind = process_type(process)  # not cached: a process caught between fork and exec changes type
                memory = process.memory_full_info()
            except psutil.Error:
                continue
            uss += memory.uss
            by_type[kind] = by_type.get(kind, 0) + memory.pss
            counts[kind] = counts.get(kind, 0) + 1
        peaks = self.peaks
        peaks.samples += 1
        total = sum(by_type.values())
        if total > peaks.total:
            peaks.total, peaks.uss_at_total, peaks.at_total, peaks.counts = total, uss, by_type, counts
        for kind, pss in by_type.items():
            peaks.by_type[kind] = max(peaks.by_type.get(kind, 0), pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_INTERVAL_S)


def pss_of_type(kind: str) -> int:
    """The summed PSS of this process's descendants of ``kind`` now (see ``process_type``)."""
    total = 0
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if process_type(process) == kind:
                total += process.memory_full_info().pss
    return total


# -- one variant ---------------------------------------------------------------------------------------


def run_variant(spec: RenderSpec, args: list[str]) -> dict[str, Any]:
    """Launch with ``args``, capture every frame of ``spec``; PSS peaks by type, frame hashes, timings."""
    hashes: list[str] = []
    with PssSampler() as sampler, composition_url(spec.composition) as url:
        started = time.perf_counter()
        with launch_browser(args=args) as browser:
            page = new_render_page(browser, spec)
            load_composition(page, url, spec)
            capture = dom_capture(spec, page.cdp)  # BeginFrame where the browser has it, as chunks capture
            startup = time.perf_counter() - started
            loop_started = time.perf_counter()
            for index, frame in enumerate(range(spec.start_frame, spec.start_frame + spec.total_frames)):
                data = capture.capture(index, frame, frame_time_ms(frame, spec.fps))
                if page.errors:
                    raise RuntimeError(f"frame {frame}: {page.errors[0]}")
                hashes.append(hashlib.sha256(data).hexdigest())
            capture_s = time.perf_counter() - loop_started
            sampler.sample()  # the state after the last frame, before anything closes
            version = browser.version
    peaks = sampler.peaks
    return {
        "args": args,
        "browser_version": version,
        "capture_method": capture.description,
        "startup_s": round(startup, 2),
        "capture_fps": round(spec.total_frames / capture_s, 2),
        "peak_pss_mb": round(peaks.total / MB, 1),
        "uss_mb_at_peak": round(peaks.uss_at_total / MB, 1),
        "peak_pss_mb_by_type_at_peak": {k: round(v / MB, 1) for k, v in sorted(peaks.at_total.items())},
        "processes_at_peak": dict(sorted(peaks.counts.items())),
        "peak_pss_mb_by_type": {k: round(v / MB, 1) for k, v in sorted(peaks.by_type.items())},
        "samples": peaks.samples,
        "frame_hashes": hashes,
        "load1_after": load1(),
    }


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def frames_changed(runs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> list[int]:
    """Frames whose bytes differ from every reference run's in every one of ``runs``.

    On a crowded machine a single screenshot now and then comes out different (the same flags, run
    twice); a flag that changes pixels changes them in every run.
    """
    seen = [{run["frame_hashes"][i] for run in reference} for i in range(len(reference[0]["frame_hashes"]))]
    return [i for i, allowed in enumerate(seen) if all(run["frame_hashes"][i] not in allowed for run in runs)]


def summarise(runs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repetitions of one variant; the frames it changes against the reference variant."""
    kinds = sorted({kind for run in runs for kind in run["peak_pss_mb_by_type_at_peak"]})
    changed = frames_changed(runs, reference) if runs is not reference else []
    return {
        "args": runs[0]["args"],
        "repetitions": len(runs),
        "peak_pss_mb": median([r["peak_pss_mb"] for r in runs]),
        "peak_pss_mb_all": [r["peak_pss_mb"] for r in runs],
        "uss_mb_at_peak": median([r["uss_mb_at_peak"] for r in runs]),
        "peak_pss_mb_by_type_at_peak": {
            k: median([r["peak_pss_mb_by_type_at_peak"].get(k, 0.0) for r in runs]) for k in kinds
        },
        "processes_at_peak": runs[0]["processes_at_peak"],
        "capture_fps": median([r["capture_fps"] for r in runs]),
        "capture_method": runs[0]["capture_method"],
        "startup_s": median([r["startup_s"] for r in runs]),
        "frames_changed": len(changed),
        "first_changed_frames": changed[:10],
        "load1_after": [r["load1_after"] for r in runs],
        "reps": [{k: v for k, v in r.items() if k != "frame_hashes"} for r in runs],
    }


# -- report ----------------------------------------------------------------------------------------------

COLUMNS = ("browser", "renderer", "gpu", "network", "storage", "zygote")


def print_table(report: dict[str, Any]) -> None:
    env = report["environment"]
    print(f"Chromium : {env['chromium']} ({env['chromium_path']})")
    print(f"Load     : 1/5/15-min load average at start {env['loadavg_at_start']}")
    print(
        f"Render   : {report['config']['composition']} {report['config']['size']}, {report['config']['frames']} frames"
    )
    print(
        "PSS in MB at the sample with the largest sum, medians of "
        f"{report['config']['repeat']} repetition(s); frames vs the first variant"
    )
    header = f"{'variant':<22}" + "".join(f"{c:>9}" for c in (*COLUMNS, "other")) + f"{'total':>8}"
    header += f"{'USS':>6}{'vs first':>9}{'fps':>6}{'procs':>6}{'load':>6}  capture"
    print(header)
    print("-" * len(header))
    for name, run in report["variants"].items():
        at = run["peak_pss_mb_by_type_at_peak"]
        other = sum(v for k, v in at.items() if k not in COLUMNS)
        cells = "".join(f"{at.get(c, 0):>9.0f}" for c in COLUMNS) + f"{other:>9.0f}"
        same = "same" if not run["frames_changed"] else f"{run['frames_changed']} diff"
        procs = sum(run["processes_at_peak"].values())
        print(
            f"{name:<22}{cells}{run['peak_pss_mb']:>8.0f}"
            f"{run['uss_mb_at_peak']:>6.0f}{same:>9}{run['capture_fps']:>6.1f}{procs:>6}{max(run['load1_after']):>6.1f}"
            f"  {run['capture_method']}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Chromium PSS by process type per set of launch flags.")
    parser.add_argument("--frames", type=int, default=60, help="frames captured per variant (default 60)")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--composition", default=str(COMPOSITION))
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[BASE, ENGINE, *CANDIDATES],
        help=f"variants, in order (the first is the reference for frames): {BASE}, {ENGINE}, {', '.join(CANDIDATES)}",
    )
    parser.add_argument("--extra", default="", help="an ad-hoc variant 'extra': these flags on top of the base flags")
    parser.add_argument("--repeat", type=int, default=1, help="run the variants R times, interleaved; medians")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if args.extra:
        args.variants.append("extra")
    unknown = [v for v in args.variants if v not in (BASE, ENGINE, "extra", *CANDIDATES)]
    if unknown:
        parser.error(f"unknown variants: {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = resolve_spec(
        args.composition,
        Path("/tmp/bench_memory.mp4"),
        {"name": "bench_memory", "width": args.width, "height": args.height, "fps": 30, "frame_count": args.frames},
    )
    extra = shlex.split(args.extra)
    env = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "chromium_path": chromium_path(),
        "chromium": "",
        "cpus": os.cpu_count(),
    }
    reps: dict[str, list[dict[str, Any]]] = {name: [] for name in args.variants}
    for rep in range(1, args.repeat + 1):
        for name in args.variants:  # interleaved: a slow or crowded spell hits every variant
            log(f"[rep {rep}] {name} ...")
            try:
                run = run_variant(spec, variant_args(name, extra if name == "extra" else []))
            except Exception as exc:  # a flag that breaks the browser is a result, not the end of the run
                log(f"{name} failed: {exc}")
                continue
            env["chromium"] = run["browser_version"]
            reps[name].append(run)
    runs = {name: summarise(runs, reps[args.variants[0]]) for name, runs in reps.items() if runs}
    report = {
        "benchmark": "helios_pipeline chromium memory",
        "environment": env,
        "config": {
            "command": " ".join(["python benchmarks/bench_memory.py", *(sys.argv[1:] if argv is None else argv)]),
            "composition": spec.composition,
            "size": f"{spec.width}x{spec.height}",
            "frames": spec.total_frames,
            "repeat": args.repeat,
        },
        "variants": runs,
    }
    line = json.dumps(report)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    print_table(report)
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
