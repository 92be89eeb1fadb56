"""Heavy imports kept out of Python's garbage collector's sight.

Importing Dagster makes ~140,000 objects that live as long as the process. While they are made, the collector's
passes scan the growing heap again and again (~0.1 of the ~0.9 CPU-s the import takes), and every later full
collection scans them all once more (~0.05 s each). None of them is garbage: the collector is paused while they
are made, and they are then frozen (``gc.freeze``: moved where no collection looks).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def long_lived_imports() -> Iterator[None]:
    """Pause the collector for the block, then freeze what exists; the collector is left as it was found."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
