"""Helpers shared by the test modules: specs, in-process materialisation, a real daemon, waiting, processes.

Test modules import from here (never from each other), so a helper has one definition and a test
module can be run, moved or deleted on its own.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import yaml
from dagster._core.instance.ref import InstanceRef
from dagster._core.scheduler.instigation import TickStatus

from helios_pipeline.dagster_defs import assets
from helios_pipeline.dagster_defs.assets import (
    chunk_video,
    concat_video,
    final_video_valid,
    mixed_video,
    render_plan,
    renders,
)
from helios_pipeline.dagster_defs.daemon import daemon_command
from helios_pipeline.dagster_defs.inbox import Inbox
from helios_pipeline.dagster_defs.registry import register_spec_file
from helios_pipeline.dagster_defs.runner import stop_process_tree
from helios_pipeline.dagster_defs.sensors import render_automation
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.plan import default_work_dir
from helios_pipeline.scratch import BROWSER_TEMP_PREFIX
from helios_pipeline_tests.conftest import COMPOSITIONS, processes_for
from helios_pipeline_tests.services import free_port

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENT_MAX_CHUNKS = 3
"""HELIOS_MAX_CHUNKS of the deployments the daemon tests start (their daemon's and CLI's code location)."""
TRIGGER_SECONDS = 2
"""HELIOS_TRIGGER_SECONDS of those deployments: their inbox sensor and automation tick every 2 s (5 s by default)."""


ALL_ASSETS = [render_plan, chunk_video, concat_video, mixed_video, final_video_valid]

# The chunk dimension is fixed when the code location loads (HELIOS_MAX_CHUNKS); the tests adapt to it.
CHUNK_KEYS = assets.chunk_partitions.get_partitions_def_for_dimension("chunk").get_partition_keys()

MAX_CHUNKS = len(CHUNK_KEYS)

SMALL = {"width": 128, "height": 128, "fps": 30}


def write_spec(folder: Path, name: str, composition: str | Path, **fields: object) -> Path:
    """A YAML spec file in ``folder`` whose output goes to ``folder/out/<name>.mp4``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"name": name, "composition": str(composition), **SMALL, "output": str(folder / "out" / f"{name}.mp4")}
    data.update(fields)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def register(instance: dg.DagsterInstance, storage: RenderStorage, spec_file: Path) -> str:
    key, _ = register_spec_file(storage, spec_file, MAX_CHUNKS)
    instance.add_dynamic_partitions(renders.name, [key])
    return key


def chunk_key(render_key: str, chunk: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"render": render_key, "chunk": chunk})


def run(
    instance: dg.DagsterInstance,
    storage: RenderStorage,
    selection: list,
    partition_key: str,
    *,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ALL_ASSETS,
        selection=selection,
        partition_key=partition_key,
        instance=instance,
        resources={"storage": storage, "inbox": Inbox(folder=str(assets.SETTINGS.inbox))},
        raise_on_error=raise_on_error,
    )


def latest_record(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> dg.EventLogRecord | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return records[0] if records else None


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> dict[str, dg.MetadataValue]:
    record = latest_record(instance, key, partition)
    assert record is not None, f"{key.to_user_string()}[{partition}] was not materialised"
    assert record.asset_materialization is not None
    return dict(record.asset_materialization.metadata)


CHUNK = dg.AssetKey("chunk_video")


RUN_MONITORING_POLL_S = 2
"""How often the test deployments' run monitoring looks at ended runs (the repo's dagster.yaml: 10 s).

It frees a killed run's pool slot ``free_slots_after_run_end_seconds`` after the run ended, on its
next poll: tests that wait for that wait for the setting, not for a slow poll.
"""
FREE_SLOTS_AFTER_RUN_END_S = 2
"""``free_slots_after_run_end_seconds`` of the test deployments (the repo's dagster.yaml and the Celery one: 10 s):
what is proven is that a killed run's slot is freed, and a retry or the next render gets it; not how long after."""


def faster_run_monitoring(config: dict) -> dict:
    """An instance config (``dagster.yaml`` as loaded) with the test deployments' run monitoring timings."""
    config.setdefault("run_monitoring", {}).update(
        poll_interval_seconds=RUN_MONITORING_POLL_S, free_slots_after_run_end_seconds=FREE_SLOTS_AFTER_RUN_END_S
    )
    return config


def write_instance_config(home: Path) -> None:
    """The repo's dagster.yaml (run queue, pools, run retries, run monitoring) with faster polls for tests
    (``faster_run_monitoring``).

    Dequeued runs are launched from threads (1 s dequeue interval): a launch waits until the run
    process has loaded the code (seconds, more on a loaded machine), and launched one after another
    short chunk runs would not overlap even though the queue and the chunk pool let them.
    """
    config = yaml.safe_load((REPO / "dagster.yaml").read_text(encoding="utf-8"))
    config.setdefault("run_queue", {}).update(dequeue_interval_seconds=1, dequeue_use_threads=True)
    faster_run_monitoring(config)
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


def deployment_env(home: Path, storage: Path, inbox: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DAGSTER_", "HELIOS_"))}
    env.update(
        DAGSTER_HOME=str(home),
        HELIOS_STORAGE=str(storage),
        HELIOS_INBOX=str(inbox),
        HELIOS_MAX_CHUNKS=str(DEPLOYMENT_MAX_CHUNKS),
        HELIOS_TRIGGER_SECONDS=str(TRIGGER_SECONDS),
    )
    return env


def open_instance(home: Path) -> dg.DagsterInstance:
    """The deployment's instance, opened (and its sqlite storage created) by the test process."""
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def deployment_processes(home: Path) -> list[psutil.Process]:
    """Live processes of the deployment at ``home``: daemon, code server, run workers, Chromium, FFmpeg."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get("DAGSTER_HOME") == str(home) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def is_browser(process: psutil.Process) -> bool:
    """A chunk's Chromium (its main process, which the engine drives over ``--remote-debugging-pipe``)."""
    return "--remote-debugging-pipe" in process.cmdline()


def is_browser_main(process: psutil.Process) -> bool:
    """Chromium's own browser process: not a helper (``--type=``), and not the wrapper script that may run it
    (Debian's /usr/bin one, whose process has the same command line and even the same name)."""
    command = process.cmdline()
    return (
        is_browser(process)
        and "chrom" in Path(process.exe()).name
        and not any(a.startswith("--type=") for a in command)
    )


def browser_parents(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The processes that started a chunk's Chromium among ``processes``: those executing a chunk step (a run
    worker, a Celery pool process). Found from the browser up, not by scanning each process's tree, where a child
    that vanishes mid-scan hides the process that rendered."""
    parents = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            # not the wrapper script that may run Chromium (it has the same command line)
            if is_browser(process) and (parent := process.parent()) is not None and not is_browser(parent):
                parents[parent.pid] = parent
    return list(parents.values())


def describe(processes: list[psutil.Process]) -> list[str]:
    described = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            described.append(f"{process.pid} {' '.join(process.cmdline()[:4])}")
    return described


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """``condition()``'s first truthy value, polled every ``interval`` s; fails the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(interval)


def backfill_runs(instance: dg.DagsterInstance, backfill_id: str) -> list[dg.RunRecord]:
    return list(instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id})))


def render_runs(instance: dg.DagsterInstance, render_key: str) -> list[dg.RunRecord]:
    records: dict[str, dg.RunRecord] = {}
    for tags in ({"dagster/partition/render": render_key}, {"dagster/partition": render_key}):
        for record in instance.get_run_records(dg.RunsFilter(tags=tags)):
            records[record.dagster_run.run_id] = record
    return list(records.values())


def chunk_runs(records: list[dg.RunRecord]) -> dict[str, list[dg.RunRecord]]:
    """Chunk runs by chunk key ("000", ...)."""
    by_chunk: dict[str, list[dg.RunRecord]] = {}
    for record in records:
        if record.dagster_run.asset_selection == {CHUNK}:
            chunk = record.dagster_run.tags["dagster/partition/chunk"]
            by_chunk.setdefault(chunk, []).append(record)
    return by_chunk


def final_video(instance: dg.DagsterInstance, render_key: str) -> Path:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=mixed_video.key, asset_partitions=[render_key]), limit=1
    ).records
    assert records, f"mixed_video[{render_key}] was not materialised"
    return Path(records[0].asset_materialization.metadata["path"].value)


def frame_index_page(folder: Path, per_frame_js: str) -> Path:
    """A copy of frame_raf (paints its frame index) running ``per_frame_js`` in every frame, before painting."""
    folder.mkdir(parents=True, exist_ok=True)
    page = (COMPOSITIONS / "frame_raf" / "index.html").read_text(encoding="utf-8")
    marker = "    cells.forEach("
    assert marker in page
    (folder / "index.html").write_text(page.replace(marker, f"    {per_frame_js}\n{marker}", 1), encoding="utf-8")
    return folder


def busy_composition(folder: Path) -> Path:
    """frame_raf with busy work in every frame (like ``slow``), so a chunk run lasts a few seconds.

    Chunk runs of bare frame_raf end about as fast as the run queue starts the next one, which
    makes their overlap a matter of luck; these outlast the start-up jitter of parallel runs.
    """
    return frame_index_page(folder, "for (let i = 0, x = 0; i < 3e7; i++) x += i % 7;")


class Gate:
    """An HTTP endpoint on 127.0.0.1 that a gated page (``gated_composition``) asks before its frames: closed, it
    holds each request up to 1 s and answers 204 (the page asks again); opened, 200. A render held at the gate is
    in progress for as long as a test needs, without burning the CPU its Dagster processes need (``busy_composition``
    does), and ends within a second or two of ``open()``."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.reached = threading.Event()  # a page has asked: a chunk is loaded and at its first frame
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                gate.reached.set()
                self.send_response(200 if gate.opened.wait(1.0) else 204)
                self.send_header("Access-Control-Allow-Origin", "*")  # the page's own server is another origin
                self.send_header("Cache-Control", "no-store")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def spec_fields(self) -> dict[str, Any]:
        """What a gated page's spec needs: a ``network`` section that lets it reach this gate (loopback is refused
        by default), and a ``stability_timeout`` (ms a frame may wait) longer than any hold of a test."""
        return {"network": {"allow": [self.address]}, "stability_timeout": 300_000}

    def open(self) -> None:
        self.opened.set()

    def close(self) -> None:
        self.opened.set()  # held requests answer at once
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def gated_composition(folder: Path, at_gate: Gate) -> Path:
    """frame_raf whose frames wait (``helios.waitUntilStable``) until ``at_gate`` is open; once it is, the page
    no longer asks. Its spec needs ``at_gate.spec_fields``."""
    page = frame_index_page(folder, "")
    script = (
        "<script>let gateOpen = false; window.helios = { waitUntilStable: async () => {"
        f" while (!gateOpen) gateOpen = (await fetch('http://{at_gate.address}/gate')).status === 200; }} }};"
        "</script>\n</head>"
    )
    index = page / "index.html"
    index.write_text(index.read_text(encoding="utf-8").replace("</head>", script, 1), encoding="utf-8")
    return page


def sensor_ticks(
    instance: dg.DagsterInstance, name: str, after: float | None = None, statuses: list[TickStatus] | None = None
) -> list:
    """The ticks of the sensor called ``name`` (``after``: that began after this time; ``statuses``: in these)."""
    return [
        tick
        for state in instance.all_instigator_state()
        if state.instigator_name == name
        for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after, statuses=statuses)
    ]


def automation_ticks_since(instance: dg.DagsterInstance, since: float) -> int:
    """Evaluations of the automation sensor that began after ``since`` and have ended (requested or skipped)."""
    return len(sensor_ticks(instance, render_automation.name, since, [TickStatus.SUCCESS, TickStatus.SKIPPED]))


@contextlib.contextmanager
def running_daemon(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """The project's daemon on the repo's workspace, in its own session; its whole group is stopped after."""
    with log.open("ab") as stream:
        process = subprocess.Popen(
            daemon_command("run", "-w", str(REPO / "workspace.yaml")),
            cwd=REPO,
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process_tree(process)  # SIGTERM to the group, then SIGKILL to whatever is left after 20 s


def browser_scratch() -> set[str]:
    """The browsers' folders in the system's temporary folder (``BROWSER_TEMP_PREFIX``: profile and temporary files),
    and Playwright's, which chunks used until 2026-12-02 (a killed browser left its profile behind)."""
    prefixes = ("playwright-artifacts-", "playwright_chromiumdev_profile-", BROWSER_TEMP_PREFIX)
    return {path.name for path in Path(tempfile.gettempdir()).iterdir() if path.name.startswith(prefixes)}


def assert_nothing_left(output: Path) -> None:
    work_dir = default_work_dir(output)
    assert not output.exists(), "no output may be presented after a failure"
    assert not work_dir.exists(), f"work folder left behind: {sorted(work_dir.rglob('*'))}"
    assert [p.name for p in output.parent.iterdir()] == [], "stray files beside the output"
    deadline = time.monotonic() + 10
    while processes_for(work_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_for(work_dir) == [], "orphaned Chromium/FFmpeg/worker processes"


@contextlib.contextmanager
def nearly_full_volume(folder: Path, size: int = 4 * 1024 * 1024, free: int = 16 * 1024) -> Iterator[Path]:
    """``folder`` as a tmpfs of ``size`` bytes with ``free`` bytes left (a filler file takes the rest).

    Writes beyond that fail with ENOSPC, as on a real full volume. Needs root (``mount``): skips the
    test otherwise. Unmounted on the way out, whatever the test left in it.
    """
    import pytest

    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        (folder / "filler").write_bytes(b"\0" * (size - free))
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)
        assert not os.path.ismount(folder), f"{folder} is still mounted"


def graphql(url: str, query: str, **variables: Any) -> dict[str, Any]:
    """One query to a Dagster webserver's GraphQL endpoint; any error it reports fails the test."""
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.loads(response.read())
    assert not payload.get("errors"), payload["errors"]
    return payload["data"]


@dataclass
class Ui:
    """A running ``helios-pipeline ui`` (webserver + the project's daemon) with its own instance and folders."""

    url: str
    process: subprocess.Popen
    home: Path
    env: dict[str, str]
    instance: dg.DagsterInstance
    root: Path
    scratch: Path  # the UI's TMPDIR, where it makes the temporary folder of its webserver and daemon

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        return graphql(self.url, query, **variables)

    def log(self) -> str:
        return (self.root / "ui.log").read_text(encoding="utf-8", errors="replace")[-3000:]


@contextlib.contextmanager
def running_ui(root: Path, max_chunks: int) -> Iterator[Ui]:
    """``helios-pipeline ui`` on a free port, with DAGSTER_HOME, storage and inbox under ``root``.

    Killed with its whole process group afterwards (if the test has not stopped it), with any
    process of the deployment that is still alive.
    """
    home, inbox = root / "home", root / "inbox"
    inbox.mkdir(parents=True)
    write_instance_config(home)
    instance = open_instance(home)
    scratch = Path(tempfile.mkdtemp(prefix="helios-ui-tmp-"))  # short: sockets go in it (108-byte path limit)
    env = {**deployment_env(home, root / "storage", inbox), "HELIOS_MAX_CHUNKS": str(max_chunks)}
    env["TMPDIR"] = str(scratch)
    port = free_port()
    command = [sys.executable, "-m", "helios_pipeline.cli", "ui", "--port", str(port)]
    with (root / "ui.log").open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield Ui(f"http://127.0.0.1:{port}", process, home, env, instance, root, scratch)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for leftover in deployment_processes(home):  # only if a test failed half-way
            with contextlib.suppress(Exception):
                leftover.kill()
        instance.wipe_daemon_heartbeats()
        instance.dispose()
        shutil.rmtree(scratch, ignore_errors=True)


def wait_until_up(ui: Ui) -> dict[str, str]:
    """The webserver answers with the code location loaded, and the daemon's backfill loop is beating."""

    def repository() -> dict[str, str] | None:
        assert ui.process.poll() is None, ui.log()
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            data = ui.graphql(REPOSITORIES)
            nodes = data["repositoriesOrError"].get("nodes") or []
            if nodes:
                return {"repositoryName": nodes[0]["name"], "repositoryLocationName": nodes[0]["location"]["name"]}
        return None

    selector = wait_for(repository, 120, "the UI to serve the code location", 0.5)
    wait_for(lambda: "BACKFILL" in ui.instance.get_daemon_heartbeats(), 60, "the daemon's heartbeat", 0.5)
    return selector


REPOSITORIES = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"


def expected_dom_capture() -> str:
    """The DOM capture the engine picks on this machine's Chromium: BeginFrame on chromium-headless-shell
    (Debian's, or Playwright's chrome-headless-shell), screenshots on a full Chromium (new headless)."""
    from helios_pipeline.engine.tools import chromium_path

    return "beginframe" if "headless" in Path(chromium_path()).name.replace("_", "-") else "screenshot"
