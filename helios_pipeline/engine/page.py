"""A composition page ready to seek: one browser context at the render's size, the seek driver
installed before any page script, the page loaded and checked, and a CDP session to drive it.

Chunks and the engine benchmark open pages the same way, so what is measured is what renders.
"""

from __future__ import annotations

import json

from playwright.sync_api import Browser, BrowserContext, CDPSession, Page
from playwright.sync_api import Error as PlaywrightError

from helios_pipeline.engine.errors import PageError, RenderError
from helios_pipeline.engine.page_scripts import page_script
from helios_pipeline.spec import RenderSpec

DATE_EPOCH_MS = 1704067200000  # 2024-01-01T00:00:00Z, Helios's fixed Date.now() origin
LOAD_TIMEOUT_MS = 60000


def timeline_script(spec: RenderSpec) -> str:
    """The seek driver with this render's props, seed and timeouts filled in."""
    config = {
        "props": spec.input_props,
        "seed": spec.random_seed & 0xFFFFFFFF,
        "epoch": DATE_EPOCH_MS,
        "stabilityTimeout": spec.stability_timeout,
    }
    return page_script("timeline.js").replace("__HELIOS_CONFIG__", json.dumps(config))


def init_script(spec: RenderSpec) -> str:
    """What runs in the page before its own scripts: the shadow-root walk (shared by the seek driver
    and the media scan) and the seek driver. One script, so the walk is there before the driver."""
    return page_script("shadow_roots.js") + "\n" + timeline_script(spec)


def frame_time_ms(frame: int, fps: float) -> float:
    """The time of frame ``frame``, computed from the integer frame (never accumulated)."""
    return frame * 1000 / fps


def new_render_page(
    browser: Browser, spec: RenderSpec, proxy: dict[str, str] | None = None
) -> tuple[BrowserContext, Page, list[str]]:
    """A page at the render's size with the seek driver installed; the list collects what the page throws.

    ``proxy`` is the chunk's egress gate (``engine.page_network``): every connection of the page goes through it.
    """
    context = browser.new_context(
        viewport={"width": spec.width, "height": spec.height}, device_scale_factor=1, proxy=proxy
    )
    context.add_init_script(script=init_script(spec))
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(f"the page threw: {error}"))
    page.on("crash", lambda _page: page_errors.append("the page crashed"))
    return context, page, page_errors


def load_composition(
    context: BrowserContext, page: Page, url: str, spec: RenderSpec, page_errors: list[str]
) -> CDPSession:
    """Load ``url`` and return a CDP session on it; a failed load or a throwing page raises, naming the composition."""
    try:
        response = page.goto(url, wait_until="load", timeout=LOAD_TIMEOUT_MS)
    except PlaywrightError as exc:
        raise RenderError(f"could not load {spec.composition}: {exc.message.splitlines()[0]}") from None
    if response is not None and response.status >= 400:
        raise RenderError(f"could not load {spec.composition}: HTTP {response.status}")
    if page_errors:
        raise PageError(f"while loading {spec.composition}: {page_errors[0]}")
    return context.new_cdp_session(page)
