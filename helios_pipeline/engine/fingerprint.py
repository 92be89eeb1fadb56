"""Moved to :mod:`helios_pipeline.fingerprint` (the fingerprint is the plan's, not the engine's).

Kept only until the last importer (helios_pipeline_tests/test_dagster_assets.py) uses the new place.
"""

from helios_pipeline.fingerprint import ENGINE_VERSION, render_fingerprint

__all__ = ["ENGINE_VERSION", "render_fingerprint"]
