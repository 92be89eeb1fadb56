"""What the warm process of ``WarmRunLauncher`` imports once, so that each forked run worker starts with it.

Importing this module *is* the preload (the launcher names it to the fork server). It holds
Dagster's run command and storages and the heavy third-party libraries the renders use. The
project's own code is *not* preloaded: each run imports the code location afresh, so a run always
executes the code as it is on disk, as with Dagster's own launcher.
"""

from __future__ import annotations

import importlib

from helios_pipeline.dagster_defs import private_api

THIRD_PARTY_MODULES = ("pydantic", "yaml", "psutil", "playwright.sync_api")
"""Imported by the renders' code; none of them starts a thread or opens a file at import, so they survive a fork."""

for _name in (*private_api.RUN_WORKER_DAGSTER_MODULES, *THIRD_PARTY_MODULES):
    importlib.import_module(_name)
