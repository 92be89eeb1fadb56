"""A DOM capture has Chromium drop its caches every few frames (``capture.DomSeek``).

A shadowed box repainted at a new size and angle each frame leaves the renderer a cached blur per frame, in
shared memory that no later frame draws from. On the standard benchmark page this grew to ~26 MB in 60 frames at
640x360 (~42 MB at 1080p). Each case drives the real capture (``dom_capture``, both DOM paths) in a real Chromium
and reads the renderer's memory from ``/proc``.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from helios_pipeline.engine.begin_frame import dom_capture
from helios_pipeline.engine.browser import Browser, launch_browser
from helios_pipeline.engine.capture import FrameCapture
from helios_pipeline.engine.capture_setting import DOM_CAPTURE_ENV
from helios_pipeline.engine.page import frame_time_ms, load_composition, new_render_page
from helios_pipeline.engine.server import composition_url
from helios_pipeline.spec import RenderSpec, validate_spec
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.helpers import expected_dom_capture

pytestmark = pytest.mark.slow

STANDARD_PAGE = Path(__file__).resolve().parents[1] / "benchmarks" / "compositions" / "standard_1080p" / "index.html"
CACHED_PAGE = COMPOSITIONS / "cached"
FRAMES = 60


def _memfd_resident_kb(pid: int) -> collections.Counter[str]:
    """Resident KB of each shared-memory region (by inode) that process ``pid`` maps."""
    regions: collections.Counter[str] = collections.Counter()
    inode = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and "-" in parts[0] and not parts[0].endswith(":"):
            inode = parts[4] if parts[5].startswith("/memfd:") else None
            if inode is not None:
                regions[inode] += 0
        elif inode is not None and parts[0] == "Rss:":
            regions[inode] += int(parts[1])
    return regions


def _process_type(cmdline: list[str]) -> str:
    return next((arg.partition("=")[2] for arg in cmdline if arg.startswith("--type=")), "browser")


def renderer_cache_mb(browser: Browser) -> float:
    """The renderer's resident shared memory that the GPU process does not map: where its caches live (the raster
    tiles it shares with the GPU process are left out)."""
    kinds = {process.pid: _process_type(process.cmdline()) for process in browser.processes()}
    gpu_regions: set[str] = set()
    for pid in (pid for pid, kind in kinds.items() if kind == "gpu-process"):
        gpu_regions |= set(_memfd_resident_kb(pid))
    renderers = [pid for pid, kind in kinds.items() if kind == "renderer"]
    assert renderers, kinds
    kb = sum(size for pid in renderers for inode, size in _memfd_resident_kb(pid).items() if inode not in gpu_regions)
    return kb / 1024


def _spec(tmp_path: Path) -> RenderSpec:
    options = {"composition": str(STANDARD_PAGE), "width": 640, "height": 360, "fps": 30, "frame_count": FRAMES}
    return validate_spec(options, base_dir=tmp_path, source="test")


def _capture(capture: FrameCapture, frames: range) -> list[bytes]:
    return [capture.capture(index, frame, frame_time_ms(frame, 30)) for index, frame in enumerate(frames)]


@pytest.fixture(params=["beginframe", "screenshot"])
def capture_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "beginframe" and expected_dom_capture() != "beginframe":
        pytest.skip("this Chromium has no BeginFrame")
    monkeypatch.setenv(DOM_CAPTURE_ENV, "auto" if request.param == "beginframe" else "screenshot")
    return request.param


@contextlib.contextmanager
def _opened(spec: RenderSpec, capture_path: str) -> Iterator[tuple[Browser, FrameCapture]]:
    """A browser with the composition loaded, and its DOM capture, as a chunk opens them; the page threw nothing."""
    with (
        composition_url(spec.composition) as url,
        launch_browser(begin_frame_control=capture_path == "beginframe") as browser,
    ):
        page = new_render_page(browser, spec)
        load_composition(page, url, spec)
        capture = dom_capture(spec, page.cdp)
        assert capture.description.startswith(f"dom/{capture_path}/")
        yield browser, capture
        assert not page.errors


def _render_and_measure(spec: RenderSpec, capture_path: str, every: int | None) -> float:
    with _opened(spec, capture_path) as (browser, capture):
        seeker = capture.seeker  # type: ignore[attr-defined]
        assert seeker.drops_caches
        if every is None:
            seeker.drops_caches = False
        else:
            seeker.every = every
        _capture(capture, range(FRAMES))
        return renderer_cache_mb(browser)


def test_the_renderer_s_caches_stay_small_while_a_chunk_renders(tmp_path: Path, capture_path: str) -> None:
    spec = _spec(tmp_path)
    kept = _render_and_measure(spec, capture_path, None)
    dropped = _render_and_measure(spec, capture_path, 10)
    assert kept > 10, f"the page filled only {kept:.1f} MB of the renderer's caches: this test shows nothing"
    assert dropped < kept / 3, f"caches dropped every 10 frames: {dropped:.1f} MB, kept: {kept:.1f} MB"


def test_frames_are_the_same_bytes_whether_caches_are_dropped_or_not(tmp_path: Path, capture_path: str) -> None:
    """On a page whose frames come out the same on every pass (what it caches stands still), passes with caches
    dropped every 3 frames give the same bytes as passes with them kept. (The standard page is no such page: a
    blur cached for one angle is reused for a near one, so its bytes depend on what was drawn before.)"""
    options = {"composition": str(CACHED_PAGE), "width": 640, "height": 360, "fps": 30, "frame_count": 30}
    spec = validate_spec(options, base_dir=tmp_path, source="test")
    frames = range(30)
    with _opened(spec, capture_path) as (_, capture):
        seeker = capture.seeker  # type: ignore[attr-defined]
        seeker.drops_caches = False
        _capture(capture, frames)  # a first pass fills the caches (and the first screenshot may differ from later ones)
        kept = _capture(capture, frames)
        kept_again = _capture(capture, frames)
        seeker.drops_caches, seeker.every = True, 3
        dropped = _capture(capture, frames)
    assert kept_again == kept, "two passes with the caches kept differ: this page shows nothing"
    differing = [frame for frame, a, b in zip(frames, kept, dropped, strict=True) if a != b]
    assert not differing, f"frames that changed when the caches were dropped: {differing}"
