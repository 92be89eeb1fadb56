"""The scripts the engine runs inside the page, read once from the package's ``engine/js/`` folder."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def page_script(name: str) -> str:
    """The text of ``engine/js/<name>`` (package data, so it ships with the wheel)."""
    return resources.files("helios_pipeline.engine").joinpath("js", name).read_text(encoding="utf-8")
