"""Work not repeated: an edit of a render's sound alone re-runs only the mix; a composition edit re-renders.

A real deployment (the project's daemon, run queue, one run per chunk, Chromium, FFmpeg) with the
default retention (``HELIOS_KEEP_DAYS`` 0), a tiny frame-index page and one audio track. The same
render is submitted again after an edit of its track, through ``helios-pipeline render`` and through
the inbox: the instance shows one new mix run and no chunk or concat run, the video stream is
bit-identical and the sound changed as edited. The automation-only part is also checked fast,
tick by tick, with runless events.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml

from helios_pipeline.dagster_defs.assets import chunk_video, concat_video, mixed_video, render_plan, renders
from helios_pipeline.dagster_defs.definitions import defs
from helios_pipeline.dagster_defs.names import BACKFILL_PLAN_TAG, DATA_VERSION_TAG
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.helpers import (
    CHUNK_KEYS,
    TRIGGER_SECONDS,
    automation_ticks_since,
    deployment_env,
    open_instance,
    render_runs,
    running_daemon,
    wait_for,
    write_instance_config,
    write_spec,
)

REPO = Path(__file__).resolve().parents[1]
FRAMES = 15  # 0.5 s at 30 fps, two chunks
RATE = 48000
RENDER_TIMEOUT_S = 300
QUIET_TICKS = 2  # automation ticks after a render's runs ended, for it to start anything it would start


# --- the automation conditions, tick by tick (no Chromium) ------------------------------------------


def report(instance: dg.DagsterInstance, asset: dg.AssetsDefinition, partition: str, version: str) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=asset.key, partition=partition, tags={DATA_VERSION_TAG: version})
    )


class Automation:
    """The code location's automation conditions evaluated tick by tick, like the automation sensor."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance
        self.cursor: str | None = None

    def tick(self) -> dict[str, int]:
        """How many partitions of each asset this tick requests."""
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=self.instance, asset_selection=dg.AssetSelection.groups("helios"), cursor=self.cursor
        )
        self.cursor = result.cursor
        counts = {asset.key.to_user_string(): len(result.get_requested_partitions(asset.key)) for asset in ASSETS}
        return {name: count for name, count in counts.items() if count}


ASSETS = [render_plan, chunk_video, concat_video, mixed_video]


def rendered(instance: dg.DagsterInstance, automation: Automation, key: str, picture: str) -> None:
    """A render finished by automation: its chunks, concat and mix recorded for ``picture``."""
    for chunk in CHUNK_KEYS:
        partition = dg.MultiPartitionKey({"render": key, "chunk": chunk})
        report(instance, chunk_video, str(partition), f"{picture}-{chunk}")
    assert automation.tick() == {"concat_video": 1, "mixed_video": 1}
    report(instance, concat_video, key, picture)
    report(instance, mixed_video, key, f"{picture}+sound")
    assert automation.tick() == {}


def test_automation_re_mixes_a_re_plan_with_the_same_pictures_and_re_renders_new_pictures() -> None:
    with dg.instance_for_test() as instance:
        automation = Automation(instance)
        automation.tick()
        instance.add_dynamic_partitions(renders.name, ["r"])
        report(instance, render_plan, "r", "pictures-1")
        assert automation.tick() == {"chunk_video": len(CHUNK_KEYS)}
        rendered(instance, automation, "r", "pictures-1")

        report(instance, render_plan, "r", "pictures-1")  # re-planned after an edit of the sound alone
        assert automation.tick() == {"mixed_video": 1}, "only the mix runs again"
        report(instance, mixed_video, "r", "pictures-1+sound-2")
        assert automation.tick() == {}

        report(instance, render_plan, "r", "pictures-2")  # the composition changed
        assert automation.tick() == {"chunk_video": len(CHUNK_KEYS)}, "the mix waits for the new concat"
        assert automation.tick() == {}
        rendered(instance, automation, "r", "pictures-2")


def plan_in_a_run(instance: dg.DagsterInstance, key: str, version: str, tags: dict[str, str]) -> None:
    """A materialisation of ``render_plan[key]`` by a run tagged ``tags`` (a stand-in asset of the same key)."""

    @dg.asset(key=render_plan.key, partitions_def=renders)
    def stand_in() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion(version))

    assert dg.materialize([stand_in], instance=instance, partition_key=key, tags=tags).success


def test_automation_leaves_the_mix_after_a_plan_made_for_a_backfill_to_that_backfill() -> None:
    """The CLI plans in its own process, tagged, once its backfill (of the mix alone) exists."""
    with dg.instance_for_test() as instance:
        automation = Automation(instance)
        automation.tick()
        instance.add_dynamic_partitions(renders.name, ["cli"])
        plan_in_a_run(instance, "cli", "pictures-1", {})
        assert automation.tick() == {"chunk_video": len(CHUNK_KEYS)}
        rendered(instance, automation, "cli", "pictures-1")

        plan_in_a_run(instance, "cli", "pictures-1", {BACKFILL_PLAN_TAG: "a-backfill-id"})
        assert automation.tick() == {}, "the backfill runs the mix"
        plan_in_a_run(instance, "cli", "pictures-1", {})
        assert automation.tick() == {"mixed_video": 1}, "an untagged re-plan re-mixes"


# --- the deployment ---------------------------------------------------------------------------------


@dataclass
class Deployment:
    """One daemon and instance for the module's renders: each test renders its own key from its own folder."""

    env: dict[str, str]
    instance: dg.DagsterInstance
    tone: Path

    @property
    def inbox(self) -> Path:
        return Path(self.env["HELIOS_INBOX"])


@dataclass
class Render:
    """A test's own folder (its composition, specs and output) on the shared deployment."""

    deployment: Deployment
    root: Path
    composition: Path

    @property
    def instance(self) -> dg.DagsterInstance:
        return self.deployment.instance


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A running daemon (backfills, the inbox sensor, automation) on a fresh instance, default retention.

    Shared by the module's tests: none stops the daemon or touches another's render key, composition,
    spec or output, and each judges only its own render's runs, materialisations and backfills.
    """
    root = tmp_path_factory.mktemp("deployment")
    home, inbox = root / "home", root / "inbox"
    inbox.mkdir()
    write_instance_config(home)
    instance = open_instance(home)
    env = deployment_env(home, root / "storage", inbox)
    assert "HELIOS_KEEP_DAYS" not in env, "the default retention removes a finished render's chunks"
    tone = root / "tone.wav"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=2",
         str(tone)],
        check=True,
    )  # fmt: skip
    try:
        with running_daemon(env, root / "daemon.log"):
            wait_for(lambda: "BACKFILL" in instance.get_daemon_heartbeats(), 120, "the daemon's heartbeat")
            yield Deployment(env, instance, tone)
    finally:
        instance.wipe_daemon_heartbeats()
        instance.dispose()


@pytest.fixture
def render(deployment: Deployment, tmp_path: Path) -> Render:
    composition = tmp_path / "composition"
    shutil.copytree(COMPOSITIONS / "frame_raf", composition)
    return Render(deployment, tmp_path, composition)


def spec_file(render: Render, name: str, **track: object) -> Path:
    return write_spec(
        render.root / "specs",
        name,
        render.composition,
        frame_count=FRAMES,
        concurrency=2,
        audio_tracks=[{"path": str(render.deployment.tone), **track}],
    )


def cli_render(render: Render, spec: Path) -> None:
    """``helios-pipeline render SPEC`` on the running deployment; it must succeed."""
    command = [sys.executable, "-m", "helios_pipeline.cli", "render", str(spec), "-q"]
    done = subprocess.run(
        command, cwd=REPO, env=render.deployment.env, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def stages(instance: dg.DagsterInstance, key: str) -> Counter[str]:
    """The render's runs by what they materialised ("chunk_video[000]", "concat_video+mixed_video", …)."""
    runs = [record.dagster_run for record in render_runs(instance, key)]
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs), [(r.run_id, r.status) for r in runs]
    counts: Counter[str] = Counter()
    for run in runs:
        stage = "+".join(sorted(k.to_user_string() for k in run.asset_selection or ()))
        chunk = run.tags.get("dagster/partition/chunk")
        counts[f"{stage}[{chunk}]" if chunk else stage] += 1
    return counts


def materializations(instance: dg.DagsterInstance, asset: dg.AssetsDefinition, key: str) -> int:
    """How many times ``asset`` was materialised for render ``key`` (any of its chunk partitions)."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=asset.key), limit=1000).records
    return sum(1 for record in records if key in (record.partition_key or "").split("|"))


def backfill_ids(instance: dg.DagsterInstance) -> set[str]:
    return {backfill.backfill_id for backfill in instance.get_backfills()}


def settled(instance: dg.DagsterInstance, key: str, quiet: bool = False) -> Counter[str]:
    """The render's runs once every one has ended (``quiet``: and automation has had its chance to start more).

    Quiet means ``QUIET_TICKS`` whole automation ticks after the runs ended: anything automation would
    start for the render it has requested by then, and its runs are waited for too.
    """

    def ended() -> bool:
        return all(r.dagster_run.is_finished for r in render_runs(instance, key))

    wait_for(ended, 120, "the runs to end")
    if quiet:
        since = time.time()
        wait_for(lambda: automation_ticks_since(instance, since) >= QUIET_TICKS, 120, "automation to tick twice")
        wait_for(ended, 120, "the runs to end")
    return stages(instance, key)


RENDERED = {"render_plan": 1, "chunk_video[000]": 1, "chunk_video[001]": 1, "concat_video+mixed_video": 1}
"""The runs of a render of two chunks on a deployment of three (the unused chunk is recorded as empty)."""


def video_md5(video: Path) -> str:
    """The MD5 of the video stream's packets, as stored (no decode)."""
    command = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(video), "-map", "0:v", "-c", "copy", "-f", "md5", "-"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def sound(video: Path) -> np.ndarray:
    command = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(video), "-map", "0:a:0", "-f", "f32le", "-ac", "1",
               "-ar", str(RATE), "-"]  # fmt: skip
    return np.frombuffer(subprocess.run(command, capture_output=True, check=True).stdout, dtype="<f4")


def rms(samples: np.ndarray, start: float, end: float) -> float:
    window = samples[round(start * RATE) : round(end * RATE)]
    assert window.size
    return float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))


def onset(samples: np.ndarray) -> float:
    loud = np.flatnonzero(np.abs(samples) > 0.05)
    assert loud.size, "no sound"
    return loud[0] / RATE


@pytest.mark.slow
def test_a_volume_edit_through_the_cli_re_mixes_only_and_a_composition_edit_re_renders(render: Render) -> None:
    instance, key = render.instance, "voiced"
    spec = spec_file(render, key, volume=1.0)
    video = spec.parent / "out" / f"{key}.mp4"
    cli_render(render, spec)
    first = settled(instance, key)
    assert first == RENDERED
    pictures, loud = video_md5(video), rms(sound(video), 0.1, 0.4)
    chunks, concats = materializations(instance, chunk_video, key), materializations(instance, concat_video, key)

    spec_file(render, key, volume=0.5)
    cli_render(render, spec)
    assert settled(instance, key, quiet=True) - first == {"render_plan": 1, "mixed_video": 1}, "only the mix ran again"
    assert (materializations(instance, chunk_video, key), materializations(instance, concat_video, key)) == (
        chunks,
        concats,
    )
    newest = instance.get_backfills()[0]
    assert newest.tags["helios/render"] == key and newest.asset_selection == [mixed_video.key]
    assert video_md5(video) == pictures, "the video stream is bit-identical"
    assert rms(sound(video), 0.1, 0.4) == pytest.approx(loud / 2, rel=0.08), "the sound is half as loud"

    page = render.composition / "index.html"
    page.write_text(page.read_text(encoding="utf-8").replace("#000", "#101010"), encoding="utf-8")
    before = settled(instance, key)
    cli_render(render, spec)
    rerendered = settled(instance, key) - before
    # new pictures make automation re-run the unused chunk partition too (a run that records it as empty
    # again): it was not the backfill's, and a re-plan with new pictures updates all of the render's chunks
    rerendered.pop("chunk_video[002]", None)
    assert rerendered == RENDERED
    assert video_md5(video) != pictures
    assert rms(sound(video), 0.1, 0.4) == pytest.approx(loud / 2, rel=0.08)


@pytest.mark.slow
def test_an_edit_of_the_track_through_the_inbox_re_mixes_only(render: Render) -> None:
    instance, key = render.instance, "dropped"
    backfills_before = backfill_ids(instance)
    video = render.root / "out" / f"{key}.mp4"

    def drop(**track: object) -> Path:
        spec = spec_file(render, key, **track)
        data = yaml.safe_load(spec.read_text(encoding="utf-8"))
        data["output"] = str(video)
        spec.write_text(yaml.safe_dump(data), encoding="utf-8")
        return spec.replace(render.deployment.inbox / spec.name)  # appears whole, as a user's save would make it

    def mixes() -> int:
        filter_ = dg.AssetRecordsFilter(asset_key=mixed_video.key, asset_partitions=[key])
        return len(instance.fetch_materializations(filter_, limit=10).records)

    drop(volume=1.0)
    wait_for(lambda: mixes() == 1, RENDER_TIMEOUT_S, "the dropped spec's final video")
    first = settled(instance, key)
    assert first == RENDERED
    pictures, samples = video_md5(video), sound(video)
    assert onset(samples) < 0.05

    time.sleep(TRIGGER_SECONDS)  # the edit must not fall within the sensor tick that saw the first version
    drop(volume=0.5, offset=0.2)
    wait_for(lambda: mixes() == 2, RENDER_TIMEOUT_S, "the re-mixed final video")
    assert settled(instance, key, quiet=True) - first == {"render_plan": 1, "mixed_video": 1}, "only the mix ran"
    assert backfill_ids(instance) == backfills_before, "the inbox path needs no backfill"
    assert video_md5(video) == pictures, "the video stream is bit-identical"
    edited = sound(video)
    assert onset(edited) == pytest.approx(0.2, abs=0.03), "the track starts at its new offset"
    assert rms(edited, 0.25, 0.45) == pytest.approx(rms(samples, 0.25, 0.45) / 2, rel=0.08)
