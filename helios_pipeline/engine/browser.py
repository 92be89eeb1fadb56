"""Chromium launch: one headless browser per chunk, flags chosen for determinism and a closed network."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from playwright.sync_api import Browser, Playwright

from helios_pipeline.engine.tools import chromium_path

LAUNCH_ARGS = (
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--hide-scrollbars",
    "--disable-lcd-text",
    "--font-render-hinting=none",
    "--force-color-profile=srgb",
    "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-features=PaintHolding,Translate,MediaRouter,OptimizationHints",
    "--autoplay-policy=no-user-gesture-required",
)


def launch_args() -> list[str]:
    args = list(LAUNCH_ARGS)
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to start its sandbox as root
    return args


@contextlib.contextmanager
def launch_browser(playwright: Playwright) -> Iterator[Browser]:
    """Launch Chromium headless and always close it, even when the chunk fails."""
    browser = playwright.chromium.launch(
        executable_path=chromium_path(), headless=True, args=launch_args(), handle_sigint=False,
        handle_sigterm=False, handle_sighup=False,
    )  # fmt: skip
    try:
        yield browser
    finally:
        with contextlib.suppress(Exception):
            browser.close()
