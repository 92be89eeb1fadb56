"""Node's compile cache for Playwright's driver: every chunk starts its own driver (a Node process
that loads Playwright's JavaScript), and with the cache it skips compiling that code again.

Measured on the 2-CPU machine under load: ``sync_playwright()`` took 0.97 s without and 0.56 s with
the cache (benchmarks/README.md, bench_canvas.py). Node checks each cached entry against the source
it was compiled from, so one folder serves every Playwright version.
"""

from __future__ import annotations

import os
from pathlib import Path

NODE_COMPILE_CACHE = "NODE_COMPILE_CACHE"


def compile_cache_folder() -> Path:
    """The user's own cache folder (never a shared one: compiled code is loaded from it)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "helios_pipeline" / "node-compile-cache"


def enable_node_compile_cache() -> None:
    """Have Node processes started from here (Playwright's driver) use the compile cache, unless the
    environment already chose a folder (or switched it off with NODE_DISABLE_COMPILE_CACHE)."""
    os.environ.setdefault(NODE_COMPILE_CACHE, str(compile_cache_folder()))
