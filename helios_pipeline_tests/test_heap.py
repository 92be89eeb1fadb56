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


def _frozen_after(code: str) -> dict:
    """The garbage collector's state as ``code`` prints it, run in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


RENDER_IMPORTS = """
import gc, json
from helios_pipeline import cli
cli._import_dagster()
print(json.dumps({"frozen": gc.get_freeze_count(), "enabled": gc.isenabled()}))
"""


def test_the_clis_dagster_imports_are_frozen() -> None:
    """What `helios-pipeline render` and `submit` import of Dagster (~140,000 objects) is frozen once imported."""
    state = _frozen_after(RENDER_IMPORTS)
    assert state["enabled"], state
    assert state["frozen"] > 100_000, state


DAEMON_IMPORTS = """
import gc, json, sys
from helios_pipeline.dagster_defs import daemon
daemon._import_dagster_daemon()
print(json.dumps({"frozen": gc.get_freeze_count(), "enabled": gc.isenabled(),
                  "daemon_cli": "dagster._daemon.cli" in sys.modules}))
"""


def test_the_daemons_dagster_imports_are_frozen() -> None:
    """The daemon's entry point imports Dagster's daemon frozen (the CLI's own daemon starts beside the CLI)."""
    state = _frozen_after(DAEMON_IMPORTS)
    assert state["enabled"] and state["daemon_cli"], state
    assert state["frozen"] > 100_000, state


CODE_SERVER_IMPORTS = """
import gc, json, sys
from helios_pipeline.dagster_defs import code_server
code_server.preload(sys.argv[1:])
print(json.dumps({"frozen": gc.get_freeze_count(), "enabled": gc.isenabled(),
                  "modules": sorted(m for m in sys.modules if m.startswith(("helios_pipeline.", "dagster._grpc")))}))
"""


@pytest.mark.parametrize(
    ("module", "imported"),
    [
        ("helios_pipeline.dagster_defs.definitions", True),
        ("helios_pipeline.no_such_module", False),  # left to the server, which reports it
        ("some_users_module", False),  # not ours: Dagster imports it from the entry's working directory
    ],
)
def test_the_early_code_server_imports_dagster_and_our_code_location_frozen(module: str, imported: bool) -> None:
    state = _frozen_after(CODE_SERVER_IMPORTS.replace("sys.argv[1:]", repr(["api", "grpc", "--module-name", module])))
    assert state["enabled"], state
    assert state["frozen"] > 100_000, state
    assert "dagster._grpc.server" in state["modules"], state
    assert (module in state["modules"]) is imported, state
