"""RenderOrchestrator: the library API. Plan, render chunks in parallel, concat, mix, clean up.

Mirrors Helios's ``RenderOrchestrator``: chunks run through a pluggable ``RenderExecutor``
(threads of this process by default; ``LocalExecutor`` runs each chunk in a process of its own),
progress is the frame-weighted sum of chunk progress, the first failing chunk aborts the others,
and temporary files are removed on success, failure and cancel.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from helios_pipeline.engine.assemble import Finished, join_chunks, mix_with_preview
from helios_pipeline.engine.audio.mix import MixResult
from helios_pipeline.engine.chunk_compat import ChunkFacts
from helios_pipeline.engine.concat import ConcatResult
from helios_pipeline.engine.contact_sheet import contact_sheet_path
from helios_pipeline.engine.errors import PageError, RenderCancelled, RenderError
from helios_pipeline.engine.fileio import claimed_folder, remove_orphaned_partials
from helios_pipeline.engine.poster import poster_path
from helios_pipeline.network import REPORTED_URLS, describe_refusals
from helios_pipeline.plan import RenderChunk, RenderPlan
from helios_pipeline.plan import plan as make_plan
from helios_pipeline.preflight import check_inputs
from helios_pipeline.processes import CHUNK_ENV, start_group, stop_group, stop_group_on
from helios_pipeline.spec import RenderSpec, resolve_spec, source_label
from helios_pipeline.storage.s3 import default_client, upload_to_uri

if TYPE_CHECKING:  # the capture engine's imports only where a chunk renders: not in the CLI's Dagster path
    from helios_pipeline.engine.chunk import ChunkResult

ProgressCallback = Callable[[float], None]
ChunkProgress = Callable[[int], None]
KILL_GRACE_SECONDS = 5.0
LOG = logging.getLogger(__name__)


class RenderExecutor(Protocol):
    """Renders one chunk somewhere; raises on failure, stops promptly when ``cancel`` is set."""

    def render(
        self, spec: RenderSpec, chunk: RenderChunk, *, on_progress: ChunkProgress, cancel: threading.Event
    ) -> ChunkResult: ...


class InProcessExecutor:
    """Renders the chunk in the calling process (one thread per chunk): the default (``default_executor``).

    ``cancel`` kills the chunk's browser at once (its watchdog), the way a worker is killed whole, and
    everything the chunk starts carries ``CHUNK_ENV`` as a worker's processes do.
    """

    def render(
        self, spec: RenderSpec, chunk: RenderChunk, *, on_progress: ChunkProgress, cancel: threading.Event
    ) -> ChunkResult:
        from helios_pipeline.engine.chunk import render_chunk

        try:
            return render_chunk(spec, chunk, on_progress=on_progress, cancel=cancel)
        except RenderError as exc:
            name = f"chunk {chunk.id}"
            if not str(exc).startswith(name):  # as a worker's errors read: "chunk 0: frame 11: ..."
                exc.args = (f"{name}: {exc}", *exc.args[1:])
            raise


class LocalExecutor:
    """Renders each chunk in a worker process of its own process group, so abort kills it whole."""

    def render(
        self, spec: RenderSpec, chunk: RenderChunk, *, on_progress: ChunkProgress, cancel: threading.Event
    ) -> ChunkResult:
        job = json.dumps({"spec": spec.to_json_dict(), "chunk": json.loads(chunk.model_dump_json())})
        process = start_group(
            [sys.executable, "-m", "helios_pipeline.engine.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, CHUNK_ENV: str(chunk.output_file)},
        )
        stderr_lines: list[str] = []
        stderr_reader = threading.Thread(
            target=lambda: stderr_lines.extend(process.stderr), daemon=True, name=f"chunk-{chunk.id}-stderr"
        )
        stderr_reader.start()
        stop_group_on(cancel, process, KILL_GRACE_SECONDS, name=f"chunk-{chunk.id}-cancel")
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(job)
            process.stdin.close()
            message: dict[str, Any] = {}
            for line in process.stdout:
                try:
                    message = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "progress" in message:
                    on_progress(int(message["progress"]))
            process.wait()
        finally:
            stop_group(process, KILL_GRACE_SECONDS)
        stderr_reader.join(timeout=5)
        if cancel.is_set():
            raise RenderCancelled(f"chunk {chunk.id} cancelled")
        if "result" in message:
            from helios_pipeline.engine.chunk import ChunkResult

            return ChunkResult(**message["result"])
        if message.get("kind") == "PageError":
            raise PageError(f"chunk {chunk.id}: {message['error']}")
        if "error" in message:
            raise RenderError(f"chunk {chunk.id}: {message['error']}")
        tail = "".join(stderr_lines[-20:]).strip()
        raise RenderError(f"chunk {chunk.id}: worker exited with code {process.returncode}: {tail}")


@dataclass
class RenderResult:
    """What a finished render produced, with the timings of every stage."""

    output: Path | str
    """The video file, or the s3:// URI it was uploaded to."""
    plan: RenderPlan
    chunks: list[ChunkResult]
    concat: ConcatResult
    mix: MixResult
    seconds: float
    contact_sheet: Path | None = None
    """A grid of thumbnails across the video, beside a local output."""
    poster: Path | str | None = None
    """The spec's ``poster_frame`` as a PNG beside the video (``<stem>.poster.png``; for an s3:// output,
    the URI it was uploaded to); None without ``poster_frame``."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def blocked_requests(self) -> int:
        """Requests of the page the network policy refused, over all chunks."""
        return sum(chunk.blocked_requests for chunk in self.chunks)

    @property
    def blocked_note(self) -> str | None:
        """A warning line naming the first refused URLs and the rule, or None when nothing was refused."""
        if not self.blocked_requests:
            return None
        urls = list(dict.fromkeys(url for chunk in self.chunks for url in chunk.blocked_urls))[:REPORTED_URLS]
        rule = next(chunk.blocked_rule for chunk in self.chunks if chunk.blocked_rule)
        return describe_refusals(self.blocked_requests, urls, rule)


class _Progress:
    """Frame-weighted global progress from per-chunk frame counts (thread-safe)."""

    def __init__(self, plan: RenderPlan, callback: ProgressCallback | None):
        self.plan = plan
        self.callback = callback
        self.frames = [0] * len(plan.chunks)
        self.lock = threading.Lock()

    def for_chunk(self, index: int) -> ChunkProgress:
        def update(frames: int) -> None:
            with self.lock:
                self.frames[index] = frames
                done = sum(self.frames)
            if self.callback is not None:
                self.callback(done / self.plan.total_frames)

        return update


class RenderOrchestrator:
    """Plan and run chunked renders (library API, like Helios's RenderOrchestrator)."""

    @staticmethod
    def plan(
        spec_or_composition: RenderSpec | str | Path, output: str | Path | None = None, **options: Any
    ) -> RenderPlan:
        return make_plan(resolve_spec(spec_or_composition, output, options))

    @staticmethod
    def render(
        spec_or_composition: RenderSpec | str | Path,
        output: str | Path | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        executor: RenderExecutor | None = None,
        **options: Any,
    ) -> RenderResult:
        """Render to ``output``; raises RenderError (or RenderCancelled) and leaves nothing behind on failure."""
        spec = resolve_spec(spec_or_composition, output, options)
        check_inputs(spec, source_label(spec_or_composition))
        return run_plan(make_plan(spec), on_progress=on_progress, cancel=cancel, executor=executor)


def run_plan(
    render_plan: RenderPlan,
    *,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    executor: RenderExecutor | None = None,
) -> RenderResult:
    """Execute a plan: chunks in parallel, then concat and mix; the work folder is always removed."""
    started = time.perf_counter()
    executor = executor or default_executor()
    outside_cancel = cancel or threading.Event()
    output = render_plan.final_output_uri or render_plan.final_output_file
    with claimed_folder(render_plan.work_dir, output) as created_work_dir:
        remove_orphaned_partials(render_plan.work_dir)  # a render killed outright left them
        chunk_results, concat, finished, poster = _render_all(
            render_plan, executor, _Progress(render_plan, on_progress), outside_cancel, created_work_dir
        )
    if on_progress is not None:
        on_progress(1.0)
    result = RenderResult(
        output=output,
        plan=render_plan,
        chunks=chunk_results,
        concat=concat,
        mix=finished.mix,
        seconds=time.perf_counter() - started,
        contact_sheet=None if render_plan.final_output_uri else finished.contact_sheet,
        poster=poster,
    )
    if result.blocked_note:
        LOG.warning(result.blocked_note)
    return result


def _render_all(
    render_plan: RenderPlan,
    executor: RenderExecutor,
    progress: _Progress,
    outside_cancel: threading.Event,
    created_work_dir: bool,
) -> tuple[list[ChunkResult], ConcatResult, Finished, Path | str | None]:
    """Chunks, concat and mix in the claimed work folder; whatever happens, the folder is cleaned up."""
    abort = threading.Event()
    try:
        chunk_results = _render_chunks(render_plan, executor, progress, abort, outside_cancel)
        facts = [ChunkFacts(r.chunk_id, f"pid {r.pid}", r.host, r.encoder_settings) for r in chunk_results]
        concat = join_chunks(render_plan, facts)
        if outside_cancel.is_set():
            raise RenderCancelled("render cancelled")
        finished = mix_with_preview(render_plan)
        poster: Path | str | None = finished.poster
        if render_plan.final_output_uri is not None:
            poster = _upload_output(
                render_plan.final_output_file, finished.contact_sheet, finished.poster, render_plan.final_output_uri
            )
    finally:
        if render_plan.final_output_uri is not None:  # made here only to be uploaded
            final = render_plan.final_output_file
            for made in (final, contact_sheet_path(final), poster_path(final)):
                made.unlink(missing_ok=True)
        _cleanup(render_plan, remove_dir=created_work_dir)
    return chunk_results, concat, finished, poster


def default_executor() -> RenderExecutor:
    """Chunks render in threads of this process (``InProcessExecutor``), however many there are.

    A worker process costs a Python start and the engine's imports before its browser starts: ~0.6 s
    on a one-chunk render, and on three chunks on two cores ~2.3 CPU-s of ~9 (``bench_canvas.py``).
    What a worker gave, a sibling stopped whole when a chunk fails, the in-process chunk has too: its
    watchdog kills its browser the moment the render is aborted. ``LocalExecutor`` stays for callers
    that want each chunk's Python in a process of its own.
    """
    return InProcessExecutor()


def _upload_output(video: Path, sheet: Path, poster: Path | None, uri: str) -> str | None:
    """An s3:// output: the video, its contact sheet beside it (``<key stem>.contact.png``) and its
    poster (``<key stem>.poster.png``); returns the poster's URI."""
    client = default_client()
    upload_to_uri(client, video, uri)
    folder, _, name = uri.rpartition("/")
    upload_to_uri(client, sheet, f"{folder}/{Path(name).stem}.contact{sheet.suffix}")
    if poster is None:
        return None
    poster_uri = f"{folder}/{poster_path(Path(name)).name}"
    upload_to_uri(client, poster, poster_uri)
    return poster_uri


def parallel_chunks(render_plan: RenderPlan) -> int:
    """How many chunks render at once: ``concurrency`` when the spec fixes ``frames_per_chunk``,
    else every chunk (the plan made one chunk per parallel worker)."""
    chunks = len(render_plan.chunks)
    if render_plan.spec.frames_per_chunk is None:
        return chunks
    return max(1, min(render_plan.spec.concurrency, chunks))


def _render_one(
    executor: RenderExecutor, spec: RenderSpec, chunk: RenderChunk, on_progress: ChunkProgress, abort: threading.Event
) -> ChunkResult:
    """One chunk in a pool thread; a failure sets ``abort`` before this thread can take a queued chunk."""
    if abort.is_set():
        raise RenderCancelled(f"chunk {chunk.id} not started: the render was aborted")
    try:
        return executor.render(spec, chunk, on_progress=on_progress, cancel=abort)
    except BaseException:
        abort.set()  # the first failing chunk aborts the others
        raise


def _render_chunks(
    render_plan: RenderPlan,
    executor: RenderExecutor,
    progress: _Progress,
    abort: threading.Event,
    outside_cancel: threading.Event,
) -> list[ChunkResult]:
    spec = render_plan.spec
    pool = ThreadPoolExecutor(max_workers=parallel_chunks(render_plan), thread_name_prefix="chunk")
    futures: list[Future[ChunkResult]] = [
        pool.submit(_render_one, executor, spec, chunk, progress.for_chunk(i), abort)
        for i, chunk in enumerate(render_plan.chunks)
    ]
    try:
        pending = set(futures)
        while pending:
            if outside_cancel.is_set():
                abort.set()
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            if abort.is_set() or any(f.exception() is not None for f in done):
                abort.set()  # the first failing chunk aborts the others
                break
    except BaseException:
        abort.set()  # Ctrl-C in the caller's thread
        raise
    finally:
        # queued chunks never start once the render is aborted; running ones stop on ``abort``
        pool.shutdown(wait=True, cancel_futures=abort.is_set())
    if outside_cancel.is_set():
        raise RenderCancelled("render cancelled")
    finished = [f for f in futures if f.done() and not f.cancelled()]
    failures = [f.exception() for f in finished if f.exception() is not None]
    real = [exc for exc in failures if not isinstance(exc, RenderCancelled)]
    if real or failures:
        raise (real or failures)[0]  # type: ignore[misc]
    return [f.result() for f in futures]


def _cleanup(render_plan: RenderPlan, *, remove_dir: bool) -> None:
    """Remove the work folder this render made; in one that was there before (the caller's, or what a render killed
    outright left), only this render's files, and the folder too once nothing else is in it."""
    if remove_dir:
        shutil.rmtree(render_plan.work_dir, ignore_errors=True)
        return
    for path in render_plan.cleanup_files:
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()
    with contextlib.suppress(OSError):  # not empty: another render's, or the caller's own files
        render_plan.work_dir.rmdir()
