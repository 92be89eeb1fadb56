"""frames_per_chunk: N chunks render through `concurrency` workers, frame-exact, and a failure aborts the rest."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from helios_pipeline.engine.chunk import ChunkResult
from helios_pipeline.engine.errors import PageError
from helios_pipeline.orchestrator import LocalExecutor, RenderOrchestrator
from helios_pipeline.plan import RenderChunk
from helios_pipeline.spec import RenderSpec
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import frame_indices
from helios_pipeline_tests.helpers import assert_nothing_left

pytestmark = pytest.mark.slow


class CountingExecutor:
    """LocalExecutor (one process per chunk) that records which chunks started and the peak in flight."""

    def __init__(self, *, others_end_after_chunk_0: bool = False) -> None:
        self.inner = LocalExecutor()
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.started: list[int] = []
        self.others_end_after_chunk_0 = others_end_after_chunk_0
        self.chunk_0_ended = threading.Event()

    def render(self, spec: RenderSpec, chunk: RenderChunk, *, on_progress, cancel: threading.Event) -> ChunkResult:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.started.append(chunk.id)
        try:
            result = self.inner.render(spec, chunk, on_progress=on_progress, cancel=cancel)
            if self.others_end_after_chunk_0 and chunk.id != 0:
                # a chunk that finished first would free its thread for a queued chunk before any failure
                self.chunk_0_ended.wait(timeout=120)
            return result
        finally:
            if chunk.id == 0:
                self.chunk_0_ended.set()
            with self.lock:
                self.running -= 1


def test_more_chunks_than_workers_render_frame_exact(tmp_path: Path) -> None:
    executor = CountingExecutor()
    output = tmp_path / "out.mp4"
    result = RenderOrchestrator.render(
        str(COMPOSITIONS / "frame_css"), output, width=256, height=256, fps=30, frame_count=20,
        frames_per_chunk=6, concurrency=2, executor=executor,
    )  # fmt: skip
    assert [(c.start_frame, c.frame_count) for c in result.plan.chunks] == [(0, 5), (5, 5), (10, 5), (15, 5)]
    assert executor.peak == 2, "concurrency caps the chunks rendering at once"
    assert sorted(executor.started) == [0, 1, 2, 3]
    assert len({chunk.pid for chunk in result.chunks}) == 4, "each chunk ran in a worker process of its own"
    assert frame_indices(output) == list(range(20))


THROWS_AT_FRAME_ONE = """<!doctype html><html><body style="background:#123"><script>
  function tick() {
    if (Math.round(performance.now() * 30 / 1000) === 1) throw new Error("boom at frame one");
    requestAnimationFrame(tick);
  }
  requestAnimationFrame(tick);
</script></body></html>"""


def test_first_failing_chunk_aborts_the_queued_ones(tmp_path: Path) -> None:
    """5 chunks of 8 frames on 2 workers; chunk 0 throws at frame 1 while chunk 1 renders: chunks 2-4 never start.

    Chunk 1 is held until chunk 0 has ended: on a loaded machine it could otherwise finish first, and its
    thread would then rightly take chunk 2 before any chunk had failed (seen once in CI)."""
    page = tmp_path / "page" / "index.html"
    page.parent.mkdir()
    page.write_text(THROWS_AT_FRAME_ONE, encoding="utf-8")
    executor = CountingExecutor(others_end_after_chunk_0=True)
    output = tmp_path / "out" / "video.mp4"
    output.parent.mkdir()
    with pytest.raises(PageError, match=r"frame 1: .*boom at frame one"):
        RenderOrchestrator.render(
            str(page), output, width=160, height=120, fps=30, frame_count=40, frames_per_chunk=8, concurrency=2,
            executor=executor,
        )  # fmt: skip
    assert sorted(executor.started) == [0, 1], "queued chunks must not start after a failure"
    assert_nothing_left(output)
