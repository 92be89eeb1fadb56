"""Everything that touches a browser or FFmpeg. Nothing here imports Dagster."""
