"""The Dagster layer: thin assets, sensors and schedules around the engine (which knows nothing of Dagster)."""
