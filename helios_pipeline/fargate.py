"""AWS Fargate's task sizes: which CPU/memory pairs a task may ask for.

Fargate refuses any other pair at ``RunTask`` time, long after a render was planned, so the spec
checks a worker size against this table when it loads and the run tags only ever pick from it.
Source: the ECS developer guide, "Task CPU and memory" (Linux, platform version 1.4.0).
"""

from __future__ import annotations

FARGATE_MEMORY_RANGES: dict[int, tuple[int, int, int]] = {
    256: (512, 2048, 512),  # 512, 1024, 2048 — 1536 is not allowed, handled below
    512: (1024, 4096, 1024),
    1024: (2048, 8192, 1024),
    2048: (4096, 16384, 1024),
    4096: (8192, 30720, 1024),
    8192: (16384, 61440, 4096),
    16384: (32768, 122880, 8192),
}
"""CPU units (1024 = one vCPU) -> (lowest MiB, highest MiB, step MiB)."""


def fargate_memory_choices(cpu: int) -> tuple[int, ...]:
    """Every memory size (MiB) Fargate accepts with ``cpu`` units, smallest first; empty if ``cpu`` is not a size."""
    if cpu not in FARGATE_MEMORY_RANGES:
        return ()
    low, high, step = FARGATE_MEMORY_RANGES[cpu]
    choices = tuple(range(low, high + 1, step))
    return tuple(m for m in choices if m != 1536) if cpu == 256 else choices


def describe_memory_choices(cpu: int) -> str:
    """The allowed memory sizes for ``cpu`` in words, for error messages."""
    low, high, step = FARGATE_MEMORY_RANGES[cpu]
    if cpu == 256:
        return "512, 1024 or 2048 MiB"
    return f"{low} to {high} MiB in steps of {step}"


def cpu_problem(cpu: int) -> str | None:
    """Why ``cpu`` is not a Fargate task size, or None when it is."""
    if cpu in FARGATE_MEMORY_RANGES:
        return None
    sizes = ", ".join(str(size) for size in FARGATE_MEMORY_RANGES)
    return f"{cpu} is not a Fargate task size; allowed CPU units: {sizes} (1024 units = 1 vCPU)"


def memory_problem(cpu: int, memory: int) -> str | None:
    """Why ``memory`` MiB does not go with ``cpu`` units on Fargate, or None when the pair is valid."""
    if cpu not in FARGATE_MEMORY_RANGES or memory in fargate_memory_choices(cpu):
        return None
    return f"{memory} MiB is not a Fargate size for {cpu} CPU units; allowed: {describe_memory_choices(cpu)}"


def smallest_fargate_size(min_cpu: int, min_memory: int) -> tuple[int, int]:
    """The cheapest valid (cpu, memory) pair with at least ``min_cpu`` units and ``min_memory`` MiB.

    CPU is raised first when no memory size of that CPU is big enough, so the result always exists
    up to Fargate's largest task (16384 units / 120 GiB), which is returned for anything bigger.
    """
    for cpu in FARGATE_MEMORY_RANGES:
        if cpu < min_cpu:
            continue
        for memory in fargate_memory_choices(cpu):
            if memory >= min_memory:
                return cpu, memory
    largest = max(FARGATE_MEMORY_RANGES)
    return largest, fargate_memory_choices(largest)[-1]
