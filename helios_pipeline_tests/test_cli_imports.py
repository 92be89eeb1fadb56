"""What `helios-pipeline render` imports before it submits a render through Dagster: every render pays it."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import helios_pipeline.cli, helios_pipeline.dagster_defs.runner, helios_pipeline.dagster_defs.definitions
dagster_path = "helios_pipeline.engine.capture" in sys.modules
from helios_pipeline.orchestrator import InProcessExecutor
InProcessExecutor.render  # the library path imports it where a chunk renders
import helios_pipeline.engine.chunk
print(json.dumps({"dagster_path": dagster_path, "library": "helios_pipeline.engine.capture" in sys.modules}))
"""


def test_the_clis_dagster_path_does_not_import_the_capture_engine() -> None:
    """Its chunks render in run workers: the capture engine's imports (Playwright's, ~0.07 s, until 2026-12-02) were
    paid by the CLI at every render's start, through the orchestrator's and the runner's imports."""
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(probe.stdout) == {"dagster_path": False, "library": True}
