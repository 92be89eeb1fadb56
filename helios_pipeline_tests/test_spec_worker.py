"""The spec's ``worker`` size (Fargate's CPU/memory pairs) and the run tags derived from a spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helios_pipeline.dagster_defs.run_tags import worker_run_tags
from helios_pipeline.fargate import fargate_memory_choices, smallest_fargate_size
from helios_pipeline.spec import RenderSpec, SpecError, load_spec, validate_spec

BASE = {"composition": "https://example.com/comp.html", "fps": 30, "frame_count": 90}


def spec_file(tmp_path: Path, **fields: object) -> Path:
    path = tmp_path / "render.yaml"
    path.write_text(yaml.safe_dump({**BASE, "width": 1920, "height": 1080, **fields}))
    return path


def make_spec(width: int, height: int, **fields: object) -> RenderSpec:
    return validate_spec({**BASE, "width": width, "height": height, **fields}, base_dir=Path.cwd(), source="spec")


def test_a_valid_worker_size_loads_and_survives_the_json_snapshot(tmp_path: Path) -> None:
    spec = load_spec(spec_file(tmp_path, worker={"cpu": 4096, "memory": 12288}))
    assert (spec.worker.cpu, spec.worker.memory) == (4096, 12288)
    again = validate_spec(spec.to_json_dict(), base_dir=tmp_path, source="snapshot")
    assert again.worker == spec.worker


@pytest.mark.parametrize(
    ("worker", "field", "reason"),
    [
        ({"cpu": 1500, "memory": 4096}, "worker.cpu", "allowed CPU units: 256, 512, 1024, 2048, 4096, 8192, 16384"),
        ({"cpu": 1024, "memory": 1024}, "worker.memory", "allowed: 2048 to 8192 MiB in steps of 1024"),
        ({"cpu": 2048, "memory": 4500}, "worker.memory", "allowed: 4096 to 16384 MiB in steps of 1024"),
        ({"cpu": 256, "memory": 1536}, "worker.memory", "allowed: 512, 1024 or 2048 MiB"),
        ({"cpu": 8192, "memory": 20000}, "worker.memory", "allowed: 16384 to 61440 MiB in steps of 4096"),
        ({"cpu": 2048}, "worker.memory", "Field required"),
        ({"cpu": 2048, "memory": 4096, "gpu": 1}, "worker.gpu", "unknown key"),
    ],
)
def test_a_worker_size_fargate_refuses_is_a_spec_error_naming_file_and_field(
    tmp_path: Path, worker: dict, field: str, reason: str
) -> None:
    path = spec_file(tmp_path, worker=worker)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert f"{path}: {field}: " in message
    assert reason in message


def test_every_fargate_pair_is_accepted_and_the_smallest_fit_is_a_valid_pair() -> None:
    for cpu in (256, 512, 1024, 2048, 4096, 8192, 16384):
        for memory in fargate_memory_choices(cpu):
            assert make_spec(64, 64, worker={"cpu": cpu, "memory": memory}).worker.memory == memory
    assert smallest_fargate_size(1024, 2049) == (1024, 3072)
    assert smallest_fargate_size(512, 5000) == (1024, 5120)  # 512 units stop at 4 GiB: CPU is raised
    assert smallest_fargate_size(256, 10**6) == (16384, 122880)


def test_run_tags_grow_with_the_frame_and_use_only_fargate_pairs() -> None:
    sizes = []
    for width, height in ((1280, 720), (1920, 1080), (3840, 2160)):
        tags = worker_run_tags(make_spec(width, height))
        cpu, memory = int(tags["ecs/cpu"]), int(tags["ecs/memory"])
        assert memory in fargate_memory_choices(cpu)
        sizes.append((cpu, memory))
    assert sizes == [(1024, 2048), (2048, 4096), (4096, 8192)]
    # the default in deploy/ecs/dagster.yaml (run_resources) is the 1080p size
    assert sizes[1] == (2048, 4096)


def test_canvas_mode_is_sized_above_dom_mode_where_it_needs_more_memory() -> None:
    dom = worker_run_tags(make_spec(4096, 3072, mode="dom"))
    canvas = worker_run_tags(make_spec(4096, 3072, mode="canvas"))
    assert (dom["ecs/cpu"], dom["ecs/memory"]) == ("4096", "8192")
    assert (canvas["ecs/cpu"], canvas["ecs/memory"]) == ("4096", "9216")


def test_an_explicit_worker_wins_and_the_k8s_tag_says_the_same_size() -> None:
    tags = worker_run_tags(make_spec(1280, 720, worker={"cpu": 8192, "memory": 16384}))
    assert (tags["ecs/cpu"], tags["ecs/memory"]) == ("8192", "16384")
    resources = json.loads(tags["dagster-k8s/config"])["container_config"]["resources"]
    assert resources["requests"] == resources["limits"] == {"cpu": "8000m", "memory": "16384Mi"}
