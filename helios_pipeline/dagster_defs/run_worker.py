"""What the warm process of ``WarmRunLauncher`` imports once, so that each forked run worker starts with it,
and the body each forked run worker runs.

Importing this module *is* the preload (the launcher names it to the fork server). It holds
Dagster's run command and storages and the heavy third-party libraries the renders use. The
project's own code is *not* preloaded: each run imports the code location afresh, so a run always
executes the code as it is on disk, as with Dagster's own launcher.
"""

from __future__ import annotations

import importlib

from helios_pipeline.dagster_defs import private_api
from helios_pipeline.heap import long_lived_imports

THIRD_PARTY_MODULES = ("pydantic", "yaml", "psutil")
"""Imported by the renders' code; none of them starts a thread or opens a file at import, so they survive a fork."""
CODE_LOCATION_MODULE = "helios_pipeline.dagster_defs.definitions"

# Frozen for the garbage collector once imported (``heap.long_lived_imports``): a worker forked from the process
# holding them shares their pages with it; without this, the worker's first full collection wrote to the header of
# every inherited object and so copied ~50 MB of the fork server into each worker (test_warm_launcher).
with long_lived_imports():
    for _name in (*private_api.RUN_WORKER_DAGSTER_MODULES, *THIRD_PARTY_MODULES):
        importlib.import_module(_name)
    private_api.reuse_sqlite_engines()  # each forked worker then compiles a statement once, not at every query
    private_api.mirror_compute_logs_by_thread()  # no `tail` and watching interpreter per stream and step


def execute(serialized_args: str) -> None:
    """Run ``dagster api execute_run`` in this worker."""
    private_api.execute_run(serialized_args)
