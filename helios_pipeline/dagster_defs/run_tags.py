"""Per-render task sizes as Dagster run tags, for run launchers that start one container per run.

``EcsRunLauncher`` reads ``ecs/cpu`` and ``ecs/memory`` (task and container overrides of ``RunTask``);
``K8sRunLauncher`` reads ``dagster-k8s/config``. Both come from the spec's ``worker`` when it is set,
otherwise from the frame size: Chromium's compositor and screenshot buffers and x264's look-ahead
grow with the pixels per frame, so a 4K render needs far more than a 720p one.

The model is anchored on one measurement (``benchmarks/bench_engine.py``, 1080p DOM page): a chunk
worker peaks at ~0.97 GB RSS (Chromium ~710 MB, FFmpeg ~215 MB; no driver process since 2026-12-02, when
Playwright's ~140 MB left it), to which the Dagster run process (``dagster api execute_run``, ~300 MB with the
definitions loaded) is added.
"""

from __future__ import annotations

import json

from helios_pipeline.fargate import smallest_fargate_size
from helios_pipeline.spec import RenderSpec

BASE_MIB = 680
"""Resident whatever the frame size: Dagster run process ~300, idle Chromium ~350, FFmpeg ~30."""
DOM_MIB_PER_MEGAPIXEL = 270
"""DOM mode, per megapixel: what Chromium (~350 MB) and FFmpeg (~215 MB) add at 1080p (2.07 MP) over idle."""
CANVAS_FACTOR = 1.5
"""Canvas mode keeps the canvas backing store and WebCodecs' frame queue in the page as well (estimate)."""
HEADROOM = 1.5
"""Pages differ (big images, many layers); a task killed for memory costs a whole chunk, a spare GiB little."""
CPU_STEPS = ((1.0, 1024), (2.1, 2048), (float("inf"), 4096))
"""(up to megapixels, CPU units): one vCPU for capture plus x264 threads that grow with the frame."""

K8S_CONFIG_TAG = "dagster-k8s/config"


def megapixels(spec: RenderSpec) -> float:
    return spec.width * spec.height / 1_000_000


def estimated_peak_mib(spec: RenderSpec) -> int:
    """The chunk worker's expected peak resident memory for this spec, before headroom."""
    per_megapixel = DOM_MIB_PER_MEGAPIXEL * (CANVAS_FACTOR if spec.mode == "canvas" else 1.0)
    return round(BASE_MIB + per_megapixel * megapixels(spec))


def worker_size(spec: RenderSpec) -> tuple[int, int]:
    """(CPU units, memory MiB) of one chunk worker: the spec's ``worker``, else the smallest Fargate size that fits."""
    if spec.worker is not None:
        return spec.worker.cpu, spec.worker.memory
    pixels = megapixels(spec)
    min_cpu = next(units for limit, units in CPU_STEPS if pixels <= limit)
    return smallest_fargate_size(min_cpu, round(estimated_peak_mib(spec) * HEADROOM))


def k8s_config(cpu: int, memory: int) -> dict:
    """The ``dagster-k8s/config`` value for a task size: equal requests and limits (no overcommit of Chromium)."""
    resources = {"cpu": f"{cpu * 1000 // 1024}m", "memory": f"{memory}Mi"}
    return {"container_config": {"resources": {"requests": resources, "limits": dict(resources)}}}


def worker_run_tags(spec: RenderSpec) -> dict[str, str]:
    """Run tags that size a chunk run's container on ECS (``ecs/cpu``, ``ecs/memory``) and Kubernetes."""
    cpu, memory = worker_size(spec)
    return {
        "ecs/cpu": str(cpu),
        "ecs/memory": str(memory),
        K8S_CONFIG_TAG: json.dumps(k8s_config(cpu, memory), sort_keys=True),
    }
