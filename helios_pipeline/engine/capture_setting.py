"""``HELIOS_DOM_CAPTURE``: which DOM capture a deployment allows. Kept apart from the capture code (none
of its imports), so the CLI and the sensors can refuse a bad value before anything renders."""

from __future__ import annotations

import os

from helios_pipeline.engine.errors import RenderError

DOM_CAPTURE_ENV = "HELIOS_DOM_CAPTURE"
"""``screenshot`` forces ``Page.captureScreenshot`` (and a browser launched without BeginFrame control);
unset or ``auto``: BeginFrame where the browser has it. For comparing the two, and as a way back."""


def dom_capture_choice() -> str:
    """``auto`` or ``screenshot``; RenderError naming the variable for anything else."""
    choice = os.environ.get(DOM_CAPTURE_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "screenshot"):
        raise RenderError(f"{DOM_CAPTURE_ENV}={choice!r}: expected 'auto' or 'screenshot'")
    return choice
