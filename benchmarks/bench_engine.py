#!/usr/bin/env python3
"""Engine benchmark: bare capture loop vs the full pipeline, and peak memory per chunk worker.

One run prints a table and, as the last line of stdout, one JSON object with:

* bare       frames/s of a bare capture loop in one browser: the engine's launch flags
             (``launch_browser``), page set-up (``new_render_page``, ``load_composition``), seek call
             (``window.__helios_seek(frame, ms)``) and DOM capture (``dom_capture``: the screenshot of a
             ``HeadlessExperimental.beginFrame``, or CDP ``Page.captureScreenshot``; JPEG q90,
             optimizeForSpeed); nothing is encoded;
* encode     frames/s of the engine's chunk FFmpeg command fed from memory with the frames the
             bare loop captured (encoding alone, capture taken out);
* c1, c2     the full pipeline (``run_plan`` with the ``LocalExecutor``) at concurrency 1 and 2:
             frames/s from start to finished mp4, and the capture-only frames/s from the
             ``ChunkResult`` metrics;
* ratios     pipeline/bare at concurrency 1 (target >= 0.9), end to end and capture loop only;
* memory     peak PSS per chunk worker: the worker's process tree (python worker, Chromium and
             its helpers, FFmpeg) sampled every ~1 s with psutil, max of
             the per-worker sum (target <= 600 MB at 1080p), split by kind; RSS (every ~0.2 s) beside it;
* cpu        CPU seconds per frame of the browser and of FFmpeg, to tell capture from encode.

``--capture both`` runs the whole sequence twice in each repetition, with the screenshot path
(``HELIOS_DOM_CAPTURE=screenshot``: what rendered before BeginFrame) and the automatic choice
(BeginFrame on chromium-headless-shell), alternating which goes first, and prints the ratios
BeginFrame/screenshot taken inside each repetition (target >= 1.25 end to end at c1).

``--repeat R`` repeats the whole sequence R times in the same run and reports medians (the
ratios are taken inside each repetition, then the median of those), which tames a noisy machine.

Run: ``python benchmarks/bench_engine.py [--frames 150] [--width 1920 --height 1080] [--preset medium]``
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from helios_pipeline.engine.begin_frame import (
    BeginFrameCapture,
    dom_capture,
    draw_screenshot,
    wants_begin_frame,
)
from helios_pipeline.engine.browser import launch_args, launch_browser
from helios_pipeline.engine.capture import DomCapture, evaluate, seek_expression
from helios_pipeline.engine.capture_setting import DOM_CAPTURE_ENV
from helios_pipeline.engine.encode import ChunkEncoder, chunk_encode_command
from helios_pipeline.engine.page import frame_time_ms, load_composition, new_render_page
from helios_pipeline.engine.probe import count_video_frames
from helios_pipeline.engine.server import composition_url
from helios_pipeline.engine.tools import chromium_path, ffmpeg_path
from helios_pipeline.orchestrator import LocalExecutor, run_plan
from helios_pipeline.plan import plan as make_plan
from helios_pipeline.spec import RenderSpec, resolve_spec

HERE = Path(__file__).resolve().parent
COMPOSITION = HERE / "compositions" / "standard_1080p" / "index.html"
SAMPLE_INTERVAL_S = 0.2
PSS_EVERY = 5  # PSS is sampled every 5th sample (~1 s); it costs ~1 ms of CPU per process
WORKER_MODULE = "helios_pipeline.engine.worker"
RATIO_TARGET = 0.9
PSS_TARGET_MB = 600
BEGIN_FRAME_TARGET = 1.25
CAPTURES = {"auto": "auto", "screenshot": "screenshot"}  # --capture value -> HELIOS_DOM_CAPTURE
MB = 1024 * 1024


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def make_spec(args: argparse.Namespace, output: Path, concurrency: int) -> RenderSpec:
    options: dict[str, Any] = {
        "name": f"bench_c{concurrency}",
        "width": args.width,
        "height": args.height,
        "fps": args.fps,
        "frame_count": args.frames,
        "concurrency": concurrency,
        "preset": args.preset,
    }
    return resolve_spec(args.composition, output, options)


# -- process trees -----------------------------------------------------------------------------


def _kind(process: psutil.Process) -> str:
    name = process.name().lower()
    if "ffmpeg" in name:
        return "ffmpeg"
    if "chrom" in name or "headless" in name:
        return "chromium"
    if "python" in name:
        return "python"
    return "other"


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def cpu_by_kind(processes: list[psutil.Process]) -> dict[str, float]:
    """CPU seconds used so far by each kind of process in ``processes`` (gone processes are skipped)."""
    out: dict[str, float] = {}
    for process in processes:
        try:
            kind, cpu = _kind(process), _cpu(process)
        except psutil.Error:
            continue
        out[kind] = out.get(kind, 0.0) + cpu
    return out


# -- bare capture loop -------------------------------------------------------------------------


@dataclass
class BareResult:
    frames: int
    startup_seconds: float
    capture_seconds: float
    seek_seconds: float
    screenshot_seconds: float
    jpeg_bytes_mean: float
    browser_version: str
    capture_method: str
    cpu_seconds: dict[str, float]
    images: list[bytes] = field(repr=False, default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.capture_seconds


def bare_capture(spec: RenderSpec, *, keep_images: bool) -> BareResult:
    """Seek + capture every frame in one browser, exactly like a chunk does, but encode nothing."""
    started = time.perf_counter()
    images: list[bytes] = []
    seek_s = shot_s = 0.0
    total_bytes = 0
    with (
        composition_url(spec.composition) as url,
        launch_browser(begin_frame_control=wants_begin_frame(spec)) as browser,
    ):
        page = new_render_page(browser, spec)
        load_composition(page, url, spec)
        cdp, errors = page.cdp, page.errors
        dom = dom_capture(spec, cdp)
        startup = time.perf_counter() - started
        browser_tree = psutil.Process().children(recursive=True)
        cpu_before = cpu_by_kind(browser_tree)
        loop_started = time.perf_counter()
        for frame in range(spec.start_frame, spec.start_frame + spec.total_frames):
            t0 = time.perf_counter()
            evaluate(cdp, seek_expression(frame, frame_time_ms(frame, spec.fps)), frame)
            t1 = time.perf_counter()
            if errors:
                raise RuntimeError(f"frame {frame}: {errors[0]}")
            if isinstance(dom, BeginFrameCapture):
                data = draw_screenshot(cdp, dom.frame_params, frame)
            else:
                assert isinstance(dom, DomCapture)
                data = base64.b64decode(cdp.send("Page.captureScreenshot", dom.screenshot_params)["data"])
            t2 = time.perf_counter()
            seek_s += t1 - t0
            shot_s += t2 - t1
            total_bytes += len(data)
            if keep_images:
                images.append(data)
        capture = time.perf_counter() - loop_started
        cpu_after = cpu_by_kind(browser_tree)
        version = browser.version
    return BareResult(
        frames=spec.total_frames,
        startup_seconds=startup,
        capture_seconds=capture,
        seek_seconds=seek_s,
        screenshot_seconds=shot_s,
        jpeg_bytes_mean=total_bytes / spec.total_frames,
        browser_version=version,
        capture_method=dom.description,
        cpu_seconds={k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after},
        images=images,
    )


# -- encode only ------------------------------------------------------------------------------


def encode_only(spec: RenderSpec, images: list[bytes], output: Path) -> dict[str, float]:
    """The engine's chunk encoder fed from memory as fast as FFmpeg accepts frames."""
    started = time.perf_counter()
    encoder = ChunkEncoder(chunk_encode_command(spec, len(images), output))
    for image in images:
        encoder.write(image)
    encoder.finish()
    seconds = time.perf_counter() - started
    frames = count_video_frames(output)
    if frames != len(images):
        raise RuntimeError(f"encode-only wrote {frames} frames, expected {len(images)}")
    return {
        "seconds": round(seconds, 3),
        "fps": round(len(images) / seconds, 2),
        "ffmpeg_cpu_s_per_frame": round(encoder.encode_cpu_seconds / len(images), 4),
        "bytes": output.stat().st_size,
        "load1_after": load1(),
    }


# -- memory sampler ----------------------------------------------------------------------------


ROLLUP_FIELDS = {"Pss:": "total", "Pss_Anon:": "anon", "Pss_Shmem:": "shmem", "Pss_File:": "file"}
"""``/proc/PID/smaps_rollup``'s PSS and its split: private and shared heaps (anon), shared memory between a
process and its helpers (shmem: Chromium's raster and compositor buffers) and the pages of files (file: the programs'
binaries and libraries, which every other worker on the machine running the same programs shares)."""


def pss_rollup(pid: int) -> dict[str, int]:
    """The process's PSS and its split by kind of memory, in bytes (empty when it is gone)."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                name, _, rest = line.partition(" ")
                if name in ROLLUP_FIELDS:
                    found[ROLLUP_FIELDS[name]] = int(rest.split()[0]) * 1024
    except OSError:
        return {}
    return found


class WorkerSampler:
    """Every ~0.2 s: RSS (PSS every ~1 s) summed over each chunk worker's process tree, and CPU times.

    RSS summed over processes counts the pages they share (Chromium's processes share most of
    their code) once per process, so it overstates the tree's footprint; PSS (each shared page
    divided among its sharers) is kept beside it. CPU is the last value seen for every process,
    so a process's final ~0.2 s are missed.
    """

    def __init__(self, interval: float = SAMPLE_INTERVAL_S):
        self.interval = interval
        self.peak_rss: dict[int, int] = {}  # worker pid -> bytes
        self.peak_pss: dict[int, int] = {}
        self.peak_breakdown: dict[int, dict[str, float]] = {}
        self.peak_pss_breakdown: dict[int, dict[str, float]] = {}
        self.peak_pss_memory: dict[int, dict[str, float]] = {}  # worker pid -> PSS by kind of memory at its peak
        self.cpu: dict[int, dict[int, tuple[str, float]]] = {}  # worker pid -> pid -> (kind, cpu seconds)
        self.samples = 0
        self.thread_cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-sampler", daemon=True)

    def __enter__(self) -> WorkerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def cpu_by_kind(self, worker_pid: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, cpu in self.cpu.get(worker_pid, {}).values():
            out[kind] = out.get(kind, 0.0) + cpu
        return out

    def _workers(self) -> list[psutil.Process]:
        found = []
        for child in psutil.Process().children(recursive=False):
            try:
                if WORKER_MODULE in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.Error:
                pass
        return found

    def _sample(self) -> None:
        # PSS reads /proc/PID/smaps_rollup (~1 ms per process): every PSS_EVERY-th sample only,
        # so the sampler's own CPU stays small on a 2-CPU machine; RSS (statm) every sample
        with_pss = self.samples % PSS_EVERY == 0
        for worker in self._workers():
            try:
                tree = [worker, *worker.children(recursive=True)]
            except psutil.Error:
                continue
            rss_total = pss_total = 0
            by_kind: dict[str, int] = {}
            pss_by_kind: dict[str, int] = {}
            pss_by_memory: dict[str, int] = {}
            cpu = self.cpu.setdefault(worker.pid, {})
            for process in tree:
                try:
                    with process.oneshot():
                        kind = _kind(process)
                        rss = process.memory_info().rss
                        rollup = pss_rollup(process.pid) if with_pss else {}
                        pss = rollup.get("total", 0)
                        cpu[process.pid] = (kind, _cpu(process))
                except psutil.Error:
                    continue  # exited between listing and reading
                rss_total += rss
                pss_total += pss
                by_kind[kind] = by_kind.get(kind, 0) + rss
                pss_by_kind[kind] = pss_by_kind.get(kind, 0) + pss
                for memory, amount in rollup.items():
                    pss_by_memory[memory] = pss_by_memory.get(memory, 0) + amount
            if with_pss and pss_total > self.peak_pss.get(worker.pid, 0):
                self.peak_pss[worker.pid] = pss_total
                self.peak_pss_breakdown[worker.pid] = {k: round(v / MB, 1) for k, v in sorted(pss_by_kind.items())}
                self.peak_pss_memory[worker.pid] = {
                    memory: round(pss_by_memory.get(memory, 0) / MB, 1) for memory in ("anon", "shmem", "file")
                }
            if rss_total > self.peak_rss.get(worker.pid, 0):
                self.peak_rss[worker.pid] = rss_total
                self.peak_breakdown[worker.pid] = {k: round(v / MB, 1) for k, v in sorted(by_kind.items())}
        self.samples += 1

    def _run(self) -> None:
        while True:
            self._sample()
            self.thread_cpu_seconds = time.thread_time()  # what sampling itself cost (on the same CPUs)
            if self._stop.wait(self.interval):
                return


# -- full pipeline -------------------------------------------------------------------------------


def pipeline(args: argparse.Namespace, work: Path, concurrency: int) -> dict[str, Any]:
    output = work / f"pipeline_c{concurrency}.mp4"
    spec = make_spec(args, output, concurrency)
    render_plan = make_plan(spec)
    with WorkerSampler() as sampler:
        started = time.perf_counter()
        result = run_plan(render_plan, executor=LocalExecutor())
        wall = time.perf_counter() - started
    frames = count_video_frames(result.output)
    if frames != spec.total_frames:
        raise RuntimeError(f"pipeline c{concurrency} wrote {frames} frames, expected {spec.total_frames}")
    chunks = []
    for chunk in sorted(result.chunks, key=lambda c: c.chunk_id):
        rss, pss = sampler.peak_rss.get(chunk.pid), sampler.peak_pss.get(chunk.pid)
        cpu = sampler.cpu_by_kind(chunk.pid)
        browser_cpu = cpu.get("chromium", 0.0)
        chunks.append(
            {
                "chunk": chunk.chunk_id,
                "frames": chunk.frame_count,
                "wall_s": round(chunk.wall_seconds, 3),
                "browser_startup_s": round(chunk.browser_startup_seconds, 3),
                "capture_s": round(chunk.capture_seconds, 3),
                "capture_fps": round(chunk.capture_fps, 2),
                "encode_tail_s": round(chunk.encode_seconds, 3),
                "ffmpeg_cpu_s_per_frame": round(chunk.encode_cpu_seconds / chunk.frame_count, 4),
                "browser_cpu_s_per_frame": round(browser_cpu / chunk.frame_count, 4),
                "peak_rss_mb": None if rss is None else round(rss / MB, 1),
                "peak_pss_mb": None if pss is None else round(pss / MB, 1),
                "peak_rss_mb_by_kind": sampler.peak_breakdown.get(chunk.pid),
                "peak_pss_mb_by_kind": sampler.peak_pss_breakdown.get(chunk.pid),
                "peak_pss_mb_by_memory": sampler.peak_pss_memory.get(chunk.pid),
            }
        )
    longest_capture = max(c.capture_seconds for c in result.chunks)
    rss_peaks = [c["peak_rss_mb"] for c in chunks if c["peak_rss_mb"] is not None]
    pss_peaks = [c["peak_pss_mb"] for c in chunks if c["peak_pss_mb"] is not None]
    return {
        "concurrency": concurrency,
        "chunks": len(render_plan.chunks),
        "wall_s": round(wall, 3),
        "fps": round(spec.total_frames / wall, 2),
        # all frames over the longest chunk's capture loop: the render's capture throughput
        "capture_fps": round(spec.total_frames / longest_capture, 2),
        "concat_s": round(result.concat.seconds, 3),
        "mix_s": round(result.mix.seconds, 3),
        "output_bytes": result.output.stat().st_size,
        "capture_method": ", ".join(sorted({c.capture_method for c in result.chunks})),
        "peak_rss_per_worker_mb": max(rss_peaks) if rss_peaks else None,
        "peak_pss_per_worker_mb": max(pss_peaks) if pss_peaks else None,
        "samples": sampler.samples,
        "sampler_cpu_s": round(sampler.thread_cpu_seconds, 3),
        "load1_after": load1(),
        "per_chunk": chunks,
    }


# -- one repetition ------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def run_once(args: argparse.Namespace, work: Path, rep: int, capture: str, encode: bool) -> dict[str, Any]:
    """One repetition with DOM capture ``capture`` (auto, screenshot): bare loop, encode only, pipelines."""
    os.environ[DOM_CAPTURE_ENV] = CAPTURES[capture]  # this process's bare loop and the chunk workers it starts
    spec = make_spec(args, work / "bare.mp4", 1)
    log(f"[rep {rep}, capture {capture}] bare capture loop: {spec.total_frames} frames ...")
    bare = bare_capture(spec, keep_images=encode)
    bare_report = {
        "fps": round(bare.fps, 2),
        "capture_s": round(bare.capture_seconds, 3),
        "startup_s": round(bare.startup_seconds, 3),
        "seek_s": round(bare.seek_seconds, 3),
        "screenshot_s": round(bare.screenshot_seconds, 3),
        "jpeg_kb_mean": round(bare.jpeg_bytes_mean / 1024, 1),
        "browser_cpu_s_per_frame": round(sum(bare.cpu_seconds.values()) / bare.frames, 4),
        "load1_after": load1(),
    }
    encoded = None
    if encode:
        log(f"[rep {rep}] encode only ...")
        encoded = encode_only(spec, bare.images, work / "encode_only.mov")
    bare.images.clear()
    runs = {}
    for concurrency in args.concurrency:
        log(f"[rep {rep}, capture {capture}] pipeline at concurrency {concurrency} ...")
        runs[concurrency] = pipeline(args, work, concurrency)
    c1, c2 = runs[1], runs.get(2)
    return {
        "rep": rep,
        "capture": capture,
        "capture_method": bare.capture_method,
        "browser_version": bare.browser_version,
        "bare": bare_report,
        "encode_only": encoded,
        "pipeline": list(runs.values()),
        "ratios": {
            "pipeline_c1_over_bare": _ratio(c1["fps"], bare.fps),
            "capture_c1_over_bare": _ratio(c1["capture_fps"], bare.fps),
            "pipeline_c2_over_c1": _ratio(c2["fps"], c1["fps"]) if c2 else None,
            "pipeline_c2_over_bare": _ratio(c2["fps"], bare.fps) if c2 else None,
        },
    }


def summarise(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repetitions (the max for memory)."""

    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(statistics.median(present), 3) if present else None

    out: dict[str, Any] = {
        "bare_fps": median([r["bare"]["fps"] for r in reps]),
        "encode_only_fps": median([(r["encode_only"] or {}).get("fps") for r in reps]),
        "bare_browser_cpu_s_per_frame": median([r["bare"]["browser_cpu_s_per_frame"] for r in reps]),
        "encode_only_ffmpeg_cpu_s_per_frame": median(
            [(r["encode_only"] or {}).get("ffmpeg_cpu_s_per_frame") for r in reps]
        ),
    }
    for concurrency in sorted({p["concurrency"] for r in reps for p in r["pipeline"]}):
        runs = [p for r in reps for p in r["pipeline"] if p["concurrency"] == concurrency]
        out[f"c{concurrency}_fps"] = median([p["fps"] for p in runs])
        out[f"c{concurrency}_capture_fps"] = median([p["capture_fps"] for p in runs])
        out[f"c{concurrency}_encode_tail_s"] = median([max(c["encode_tail_s"] for c in p["per_chunk"]) for p in runs])
        out[f"c{concurrency}_ffmpeg_cpu_s_per_frame"] = median(
            [c["ffmpeg_cpu_s_per_frame"] for p in runs for c in p["per_chunk"]]
        )
        out[f"c{concurrency}_browser_cpu_s_per_frame"] = median(
            [c["browser_cpu_s_per_frame"] for p in runs for c in p["per_chunk"]]
        )
    for key in reps[0]["ratios"]:
        out[key] = median([r["ratios"][key] for r in reps])
        out[f"{key}_all"] = [r["ratios"][key] for r in reps]
    rss = [p["peak_rss_per_worker_mb"] for r in reps for p in r["pipeline"] if p["peak_rss_per_worker_mb"]]
    pss = [p["peak_pss_per_worker_mb"] for r in reps for p in r["pipeline"] if p["peak_pss_per_worker_mb"]]
    out["peak_rss_per_worker_mb"] = max(rss) if rss else None
    out["peak_pss_per_worker_mb"] = max(pss) if pss else None
    peaks = [c for r in reps for p in r["pipeline"] for c in p["per_chunk"] if c["peak_pss_mb"]]
    top = max(peaks, key=lambda chunk: chunk["peak_pss_mb"], default={})
    out["peak_pss_by_memory_mb"] = top.get("peak_pss_mb_by_memory")  # the split of that worker at its peak
    out["meets_ratio_target"] = (out["pipeline_c1_over_bare"] or 0) >= RATIO_TARGET
    out["meets_pss_target"] = (
        out["peak_pss_per_worker_mb"] is not None and out["peak_pss_per_worker_mb"] <= PSS_TARGET_MB
    )
    out["capture_method"] = reps[0]["capture_method"]
    return out


def compare_captures(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """BeginFrame (auto) over screenshot, inside each repetition, then the median."""
    pairs = []
    for number in sorted({r["rep"] for r in reps}):
        by_capture = {r["capture"]: r for r in reps if r["rep"] == number}
        auto, shot = by_capture["auto"], by_capture["screenshot"]
        ratios = {"bare": _ratio(auto["bare"]["fps"], shot["bare"]["fps"])}
        for run in auto["pipeline"]:
            other = next(p for p in shot["pipeline"] if p["concurrency"] == run["concurrency"])
            ratios[f"c{run['concurrency']}"] = _ratio(run["fps"], other["fps"])
            ratios[f"c{run['concurrency']}_capture"] = _ratio(run["capture_fps"], other["capture_fps"])
        pairs.append(ratios)
    out: dict[str, Any] = {"methods": {r["capture"]: r["capture_method"] for r in reps}}
    for key in pairs[0]:
        values = [pair[key] for pair in pairs if pair[key] is not None]
        out[key] = round(statistics.median(values), 3) if values else None
        out[f"{key}_all"] = [pair[key] for pair in pairs]
    out["meets_target"] = (out.get("c1") or 0) >= BEGIN_FRAME_TARGET
    return out


# -- environment -----------------------------------------------------------------------------------


def _first_line(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False).stdout
    except OSError as exc:
        return f"unavailable ({exc})"
    return (out.strip().splitlines() or ["?"])[0]


def environment() -> dict[str, Any]:
    cpu_model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu_model,
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "chromium_path": chromium_path(),
        "chromium": _first_line([chromium_path(), "--version"]),
        "chromium_flags": launch_args(),
        "chromium_flags_begin_frame": launch_args(begin_frame_control=True),
        "ffmpeg_path": ffmpeg_path(),
        "ffmpeg": _first_line([ffmpeg_path(), "-hide_banner", "-version"]),
    }


# -- report --------------------------------------------------------------------------------------


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


def print_table(report: dict[str, Any]) -> None:
    env, cfg = report["environment"], report["config"]
    print(f"Chromium : {env['chromium']} ({env['chromium_path']})")
    print(f"FFmpeg   : {env['ffmpeg']} ({env['ffmpeg_path']})")
    print(f"Machine  : {env['cpu']}, {env['cpus']} CPUs, {env['memory_gb']} GB RAM, {env['os']}")
    print(f"Load     : 1/5/15-min load average at start {env['loadavg_at_start']}")
    print(f"Render   : {cfg['composition']}")
    print(
        f"           {cfg['width']}x{cfg['height']} @ {cfg['fps']:g} fps, {cfg['frames']} frames, "
        f"{cfg['video_codec']} preset={cfg['preset']} crf={cfg['crf']}, {cfg['image_format']} q{cfg['image_quality']}, "
        f"{cfg['repeat']} repetition(s)"
    )
    header = (
        f"{'measurement':<46} {'wall s':>7} {'frames/s':>9} {'capture fps':>12} {'tail s':>7} "
        f"{'RSS/worker':>11} {'PSS/worker':>11} {'load':>5}"
    )
    for rep in report["reps"]:
        print()
        print(f"repetition {rep['rep']}, DOM capture {rep['capture_method']} (--capture {rep['capture']})")
        print(header)
        print("-" * len(header))
        bare = rep["bare"]
        print(
            f"{'bare capture loop (1 browser, no encode)':<46} {bare['capture_s']:>7.1f} {bare['fps']:>9.2f} "
            f"{'':>12} {'':>7} {'':>11} {'':>11} {bare['load1_after']:>5.1f}"
        )
        enc = rep["encode_only"]
        if enc:
            print(
                f"{'encode only (chunk FFmpeg fed from memory)':<46} {enc['seconds']:>7.1f} {enc['fps']:>9.2f} "
                f"{'':>12} {'':>7} {'':>11} {'':>11} {enc['load1_after']:>5.1f}"
            )
        for run in rep["pipeline"]:
            label = f"pipeline, concurrency {run['concurrency']} ({run['chunks']} chunk(s))"
            tail = max(c["encode_tail_s"] for c in run["per_chunk"])
            print(
                f"{label:<46} {run['wall_s']:>7.1f} {run['fps']:>9.2f} {run['capture_fps']:>12.2f} {tail:>7.2f} "
                f"{_mb(run['peak_rss_per_worker_mb']):>11} {_mb(run['peak_pss_per_worker_mb']):>11} "
                f"{run['load1_after']:>5.1f}"
            )
        r = rep["ratios"]
        print(
            f"pipeline/bare at c1: end to end {r['pipeline_c1_over_bare']}, capture loop {r['capture_c1_over_bare']}; "
            f"c2/c1 {r['pipeline_c2_over_c1']}"
        )
        for run in rep["pipeline"]:
            for c in run["per_chunk"]:
                print(
                    f"  c{run['concurrency']} chunk {c['chunk']}: {c['frames']} frames, "
                    f"startup {c['browser_startup_s']:.2f} s, "
                    f"capture {c['capture_s']:.1f} s, CPU/frame browser {c['browser_cpu_s_per_frame']:.3f} s "
                    f"ffmpeg {c['ffmpeg_cpu_s_per_frame']:.3f} s, peak RSS by kind {c['peak_rss_mb_by_kind']}, "
                    f"peak PSS by kind {c['peak_pss_mb_by_kind']}, by memory {c['peak_pss_mb_by_memory']}"
                )
        print(
            f"  bare loop: seek {bare['seek_s']:.1f} s + screenshot {bare['screenshot_s']:.1f} s, "
            f"browser CPU/frame {bare['browser_cpu_s_per_frame']:.3f} s, mean JPEG {bare['jpeg_kb_mean']:.0f} kB"
        )
    for capture, summary in report["summaries"].items():
        print_summary(summary, capture, env, cfg)
    comparison = report.get("comparison")
    if comparison:
        print_comparison(comparison, cfg)


def print_comparison(comparison: dict[str, Any], cfg: dict[str, Any]) -> None:
    methods = comparison["methods"]
    many = cfg["repeat"] > 1
    print()
    print(f"{methods['auto']} over {methods['screenshot']}" + (" (median of per-repetition ratios)" if many else ""))
    verdict = "meets" if comparison["meets_target"] else "MISSES"
    for key in [k for k in comparison if k not in ("methods", "meets_target") and not k.endswith("_all")]:
        label = "bare capture loop" if key == "bare" else f"pipeline {key.replace('_', ' ')}"
        note = f" ({verdict} target >= {BEGIN_FRAME_TARGET} end to end)" if key == "c1" else ""
        print(f"  {label:<26} {comparison[key]:>7.3f}x{note}" + (f" {comparison[f'{key}_all']}" if many else ""))


def print_summary(s: dict[str, Any], capture: str, env: dict[str, Any], cfg: dict[str, Any]) -> None:
    many = cfg["repeat"] > 1
    print()
    print(
        f"summary, DOM capture {s['capture_method']} (--capture {capture})"
        + (f" (median of {cfg['repeat']} repetitions; memory: max)" if many else "")
    )
    print(f"  bare capture loop          {s['bare_fps']:>7.2f} frames/s")
    if s["encode_only_fps"] is not None:
        print(f"  encode only                {s['encode_only_fps']:>7.2f} frames/s")
    for concurrency in cfg["concurrency"]:
        print(
            f"  pipeline c{concurrency}                {s[f'c{concurrency}_fps']:>7.2f} frames/s end to end, "
            f"{s[f'c{concurrency}_capture_fps']:.2f} capture-only"
        )
    verdict = "meets" if s["meets_ratio_target"] else "MISSES"
    print(
        f"  pipeline/bare at c1        {s['pipeline_c1_over_bare']:>7.3f} end to end "
        f"({verdict} target >= {RATIO_TARGET})" + (f" {s['pipeline_c1_over_bare_all']}" if many else "")
    )
    print(
        f"  capture loop/bare at c1    {s['capture_c1_over_bare']:>7.3f}"
        + (f" {s['capture_c1_over_bare_all']}" if many else "")
    )
    verdict = "meets" if s["meets_pss_target"] else "MISSES"
    print(
        f"  peak PSS per chunk worker  {_mb(s['peak_pss_per_worker_mb']):>10} "
        f"({verdict} target <= {PSS_TARGET_MB} MB); "
        f"RSS {_mb(s['peak_rss_per_worker_mb'])}"
    )
    if split := s.get("peak_pss_by_memory_mb"):
        print(
            f"    of it: heaps {split['anon']:.0f} MB, shared memory {split['shmem']:.0f} MB, "
            f"the programs' file pages {split['file']:.0f} MB (shared with every other worker on the machine)"
        )
    print(
        f"  CPU per frame at c1        browser {s['c1_browser_cpu_s_per_frame']:.3f} s, "
        f"FFmpeg {s['c1_ffmpeg_cpu_s_per_frame']:.3f} s ({env['cpus']} CPUs)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default_preset = RenderSpec.model_fields["preset"].default
    parser = argparse.ArgumentParser(
        description="Bare capture loop vs full pipeline frames/s, and peak memory per chunk worker."
    )
    parser.add_argument("--frames", type=int, default=150, help="frames per measurement (default 150)")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--preset", default=default_preset, help=f"x264 preset (default: the spec's, {default_preset})")
    parser.add_argument("--composition", default=str(COMPOSITION), help="composition (default: standard_1080p)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2], help="pipeline concurrencies (1 2)")
    parser.add_argument("--repeat", type=int, default=1, help="repeat the whole sequence and report medians")
    parser.add_argument("--no-encode-only", action="store_true", help="skip the encode-only measurement")
    parser.add_argument(
        "--capture",
        choices=["auto", "screenshot", "both"],
        default="auto",
        help="DOM capture: auto (BeginFrame where available), screenshot, or both in each repetition (ratio)",
    )
    parser.add_argument("--json-out", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    args.concurrency = sorted(set(args.concurrency) | {1})
    if args.frames < 1 or args.repeat < 1:
        parser.error("--frames and --repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment()
    spec = make_spec(args, Path(tempfile.gettempdir()) / "bench.mp4", 1)
    captures = ["screenshot", "auto"] if args.capture == "both" else [args.capture]
    reps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="helios-bench-") as tmp:
        for rep in range(1, args.repeat + 1):
            order = captures if rep % 2 else captures[::-1]  # alternate who goes first
            for capture in order:
                encode = not args.no_encode_only and capture == order[0]
                reps.append(run_once(args, Path(tmp), rep, capture, encode))
    summaries = {capture: summarise([r for r in reps if r["capture"] == capture]) for capture in captures}
    report: dict[str, Any] = {
        "benchmark": "helios_pipeline engine",
        "environment": env,
        "config": {
            "command": " ".join(["python benchmarks/bench_engine.py", *(sys.argv[1:] if argv is None else argv)]),
            "composition": spec.composition,
            "width": spec.width,
            "height": spec.height,
            "fps": spec.fps,
            "frames": spec.total_frames,
            "video_codec": spec.video_codec,
            "preset": spec.preset,
            "crf": spec.crf,
            "image_format": spec.intermediate_image_format,
            "image_quality": spec.intermediate_image_quality,
            "concurrency": args.concurrency,
            "repeat": args.repeat,
            "browser_version": reps[0]["browser_version"],
        },
        "targets": {
            "pipeline_c1_over_bare_min": RATIO_TARGET,
            "peak_pss_per_worker_mb_max": PSS_TARGET_MB,
            "begin_frame_over_screenshot_c1_min": BEGIN_FRAME_TARGET,
        },
        "summary": summaries[captures[-1]],
        "summaries": summaries,
        "comparison": compare_captures(reps) if args.capture == "both" else None,
        "reps": reps,
    }
    line = json.dumps(report)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    print_table(report)
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
