"""Heavy imports without the garbage collector's passes over them (``helios_pipeline.heap``)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

from helios_pipeline.heap import long_lived_imports
from helios_pipeline_tests.helpers import REPO


def test_the_collector_is_paused_in_the_block_then_what_was_made_is_frozen() -> None:
    frozen = gc.get_freeze_count()
    try:
        with long_lived_imports():
            assert not gc.isenabled()
            made = [{"n": index} for index in range(20_000)]  # dicts: objects the collector tracks
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen + len(made)
    finally:
        gc.unfreeze()  # the test process's other objects go back to the collector
        gc.enable()


def test_a_paused_collector_stays_paused_and_a_failing_block_restores_it() -> None:
    gc.disable()
    try:
        with long_lived_imports():
            pass
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()
    with pytest.raises(ImportError), long_lived_imports():
        raise ImportError("a module that does not import")
    gc.unfreeze()
    assert gc.isenabled()


RENDER_IMPORTS = """
import gc, json
from helios_pipeline import cli
cli._import_dagster()
print(json.dumps({"frozen": gc.get_freeze_count(), "enabled": gc.isenabled()}))
"""


def test_the_clis_dagster_imports_are_frozen() -> None:
    """What `helios-pipeline render` and `submit` import of Dagster (~140,000 objects) is frozen once imported."""
    result = subprocess.run(
        [sys.executable, "-c", RENDER_IMPORTS], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    state = json.loads(result.stdout.splitlines()[-1])
    assert state["enabled"], state
    assert state["frozen"] > 100_000, state
