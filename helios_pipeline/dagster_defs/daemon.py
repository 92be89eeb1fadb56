"""`dagster-daemon run` with a short backfill loop.

Dagster's backfill daemon wakes every 30 s (``DEFAULT_DAEMON_INTERVAL_SECONDS``, not an instance
setting), and an asset backfill advances one stage per wake-up: plan, then chunks, then concat +
mix. For a render that takes half a minute on one machine that wait dominated the wall time
(a 20 s render through a backfill took 4x the library's time). This entry point runs the stock
daemon with that loop shortened to ``HELIOS_BACKFILL_LOOP_SECONDS`` (default 1 s); an idle loop
is one query on the instance's run storage.

The constant is read when the backfill loop starts, so setting it before the daemon's CLI runs
is enough. It is private Dagster API, pinned with dagster==1.13.27: if a Dagster upgrade
removes it, the daemon still runs, with Dagster's own 30 s loop, and says so.

    python -m helios_pipeline.dagster_defs.daemon run -w workspace.yaml
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from helios_pipeline.dagster_defs import private_api, warm_launcher
from helios_pipeline.dagster_defs.settings import env_number

DEFAULT_BACKFILL_LOOP_SECONDS = 1.0
LOOP_SETTING = "HELIOS_BACKFILL_LOOP_SECONDS"


def backfill_loop_seconds() -> float:
    """The backfill loop interval from the environment; a clear error for a value out of 0.5..300 s."""
    return env_number(LOOP_SETTING, DEFAULT_BACKFILL_LOOP_SECONDS, 0.5, 300, unit="seconds")


def shorten_backfill_loop(seconds: float) -> bool:
    """Set the backfill daemon's loop interval for this process; False when this Dagster has no such knob."""
    return private_api.set_daemon_loop_interval(seconds)


def daemon_command(*args: str) -> list[str]:
    """The command line that starts this daemon (what the CLI and `helios-pipeline ui` run)."""
    return [sys.executable, "-m", "helios_pipeline.dagster_defs.daemon", *args]


def main(argv: list[str] | None = None) -> None:
    try:
        seconds = backfill_loop_seconds()
    except ValueError as exc:
        sys.exit(f"helios-pipeline daemon: {exc}")
    shorten_backfill_loop(seconds)
    home = os.environ.get("DAGSTER_HOME")
    if home and warm_launcher.configured(Path(home) / "dagster.yaml"):
        warm_launcher.warm_up()  # its imports overlap the daemon's start, not the first run's
    private_api.run_daemon_cli(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
