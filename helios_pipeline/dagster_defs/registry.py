"""Registering a render: validate its spec for this deployment and snapshot it under a render key.

Sensors, schedules and the CLI all register renders the same way; the assets then read the
snapshot, so a spec file edited later does not change a render already in flight.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import dagster as dg

from helios_pipeline.dagster_defs import private_api
from helios_pipeline.dagster_defs.names import CHUNK_POOL
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.plan import chunk_count
from helios_pipeline.preflight import check_inputs
from helios_pipeline.spec import RenderSpec, SpecError, load_spec, sanitize_key, validate_spec


def chunks_at_once(instance: dg.DagsterInstance | None, max_chunks: int) -> int:
    """The chunks of a render whose spec asks for no number: as many as the deployment renders at once (the
    ``helios_chunks`` pool's slots), at most ``max_chunks``. More would only wait for a slot, each paying a run's
    and a browser's start (4 chunks on 2 slots: a 4 s render took 13.9 s instead of 10.3 s). ``max_chunks``
    where the pool has no limit, or without an instance to ask."""
    if instance is None:
        return max_chunks
    slots = private_api.pool_usage(instance, CHUNK_POOL)[0]
    return min(max_chunks, slots) if slots > 0 else max_chunks


def spec_for_render(
    spec: RenderSpec, render_key: str, max_chunks: int, source: str, instance: dg.DagsterInstance | None = None
) -> RenderSpec:
    """``spec`` renamed to ``render_key`` (output renamed alike) with its chunk count fitted to the deployment.

    A spec without an explicit ``concurrency`` (or ``frames_per_chunk``) gets ``chunks_at_once`` chunks
    (``instance``: the deployment's); asking for more chunks than the deployment has (``max_chunks``) is an error
    naming the field that asked.
    """
    key = sanitize_key(render_key)
    data = spec.to_json_dict()
    data["name"] = key
    if key != spec.name:
        if spec.output_uri is not None:
            folder, _, name = spec.output_uri.rpartition("/")
            data["output"] = f"{folder}/{key}{PurePosixPath(name).suffix}"
        else:
            output = spec.output_path
            data["output"] = str(output.with_name(f"{key}{output.suffix}"))
    if spec.frames_per_chunk is not None:
        chunks, field = chunk_count(spec), "frames_per_chunk"
        if "concurrency" not in spec.model_fields_set:  # the run queue and the chunk pool pace a deployment
            data["concurrency"] = min(chunks, max_chunks)
    elif "concurrency" not in spec.model_fields_set:
        data["concurrency"] = chunks = chunks_at_once(instance, max_chunks)
        field = "concurrency"
    else:
        chunks, field = spec.concurrency, "concurrency"
    if chunks > max_chunks:
        raise SpecError(
            source,
            [(field, f"{chunks} chunks exceed this deployment's limit of {max_chunks} (HELIOS_MAX_CHUNKS); "
                     f"ask for fewer chunks or raise the limit")],
        )  # fmt: skip
    prepared = validate_spec(data, base_dir=Path.cwd(), source=source)
    check_inputs(prepared, source, fetch_composition=False)  # limits and audio tracks, before any snapshot
    return prepared


def register_spec(
    storage: RenderStorage,
    spec: RenderSpec,
    max_chunks: int,
    render_key: str | None = None,
    source: str = "spec",
    instance: dg.DagsterInstance | None = None,
) -> tuple[str, RenderSpec]:
    """Fit ``spec`` to the deployment (``spec_for_render``) and snapshot it as render ``render_key`` (default: the
    spec's name)."""
    prepared = spec_for_render(spec, render_key or spec.name, max_chunks, source, instance)
    storage.save_spec(prepared.name, prepared)
    return prepared.name, prepared


def register_spec_file(
    storage: RenderStorage,
    spec_path: Path,
    max_chunks: int,
    render_key: str | None = None,
    instance: dg.DagsterInstance | None = None,
) -> tuple[str, RenderSpec]:
    """Validate ``spec_path`` and snapshot it as render ``render_key`` (default: the spec's name)."""
    return register_spec(storage, load_spec(spec_path), max_chunks, render_key, str(spec_path), instance)
