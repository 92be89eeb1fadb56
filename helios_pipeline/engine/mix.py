"""Moved to :mod:`helios_pipeline.engine.audio.mix` (beside the page audio, on one timeline).

Kept only until the last importer (helios_pipeline/dagster_defs/assets.py) uses the new place.
"""

from helios_pipeline.engine.audio.mix import MixResult, mix_final

__all__ = ["MixResult", "mix_final"]
