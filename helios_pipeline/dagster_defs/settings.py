"""Deployment settings, read from the environment once per code-location load."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from helios_pipeline.limits import SettingError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_HOME = PROJECT_ROOT / ".dagster_home"
UI_SUBFOLDER = "ui"
"""The UI's spec folder inside the inbox when HELIOS_UI_SPECS is not set (the sensor reads only the top level)."""
DEFAULT_MAX_CHUNKS = 4
TRIGGER_SETTING = "HELIOS_TRIGGER_SECONDS"
DEFAULT_TRIGGER_SECONDS = 5
"""Dagster's own floor for its sensor and automation loops, and so the sensors' default interval."""


def dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to .dagster_home/ in the project with the repo's dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and (PROJECT_ROOT / "dagster.yaml").is_file():
        shutil.copy(PROJECT_ROOT / "dagster.yaml", config)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


@dataclass(frozen=True)
class Settings:
    storage: str
    """A local folder or ``s3://bucket/prefix``."""
    inbox: Path
    max_chunks: int
    keep_days: str = "0"
    ui_specs: Path | None = None
    """Specs started from the UI (HELIOS_UI_SPECS); default ``<inbox>/ui``, a folder the sensor does not watch."""

    @classmethod
    def from_env(cls) -> Settings:
        """HELIOS_STORAGE (default .helios/), HELIOS_INBOX (default compositions/), HELIOS_MAX_CHUNKS (4),
        HELIOS_KEEP_DAYS (0: a finished render's chunks go once its video passed its check),
        HELIOS_UI_SPECS (<inbox>/ui)."""
        raw_storage = os.environ.get("HELIOS_STORAGE") or str(PROJECT_ROOT / ".helios")
        inbox = inbox_folder()
        return cls(
            storage=raw_storage if raw_storage.startswith("s3://") else str(Path(raw_storage).resolve()),
            keep_days=os.environ.get("HELIOS_KEEP_DAYS") or "0",
            inbox=inbox,
            ui_specs=Path(os.environ.get("HELIOS_UI_SPECS") or inbox / UI_SUBFOLDER).resolve(),
            max_chunks=int(env_number("HELIOS_MAX_CHUNKS", DEFAULT_MAX_CHUNKS, 1, 999, whole=True)),
        )


def inbox_folder() -> Path:
    """The inbox the sensor watches and schedules are read from: HELIOS_INBOX, default ``compositions/``."""
    return Path(os.environ.get("HELIOS_INBOX") or PROJECT_ROOT / "compositions").resolve()


def env_number(name: str, default: float, low: float, high: float, *, whole: bool = False, unit: str = "") -> float:
    """A numeric setting from the environment; ``SettingError`` (a ValueError) names it and the value it got."""
    raw = os.environ.get(name, str(default))
    of_unit = f" of {unit}" if unit else ""
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise SettingError(f"{name} must be {kind}{of_unit}, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingError(f"{name} must be between {low:g} and {high:g}{' ' + unit if unit else ''}, got {raw!r}")
    return value


def sensor_interval_seconds(trigger: int) -> int:
    """The sensors' ``minimum_interval_seconds`` for a trigger every ``trigger`` seconds: a second less (at least 1).
    Dagster's sensor and automation loops go round every ``trigger`` seconds, every 5 s at most
    (``daemon.trigger_loop_seconds``), and evaluate a sensor whose interval has passed since its last tick started.
    With the interval equal to the rounds, a round that reached the sensor a moment sooner than the last one skipped
    it, and a render waited two intervals at that stage (10 s instead of 5)."""
    return max(1, trigger - 1)


def trigger_seconds() -> int:
    """How often the inbox sensor looks for specs and automation advances renders (HELIOS_TRIGGER_SECONDS, whole
    seconds, default 5): each render the inbox or a schedule starts waits up to this long at each of its stages."""
    return int(env_number(TRIGGER_SETTING, DEFAULT_TRIGGER_SECONDS, 1, 86400, whole=True, unit="seconds"))


def chunk_keys(max_chunks: int) -> list[str]:
    return [f"{index:03d}" for index in range(max_chunks)]


def export_defaults() -> Settings:
    """Put the settings' defaults into this process's environment and return the settings.

    The code location's resources read HELIOS_STORAGE, HELIOS_INBOX, HELIOS_UI_SPECS and HELIOS_KEEP_DAYS through
    ``dg.EnvVar`` (so the UI shows where each value comes from); an unset variable gets the same
    default here that the CLI uses.
    """
    settings = Settings.from_env()
    os.environ.setdefault("HELIOS_STORAGE", settings.storage)
    os.environ.setdefault("HELIOS_INBOX", str(settings.inbox))
    os.environ.setdefault("HELIOS_KEEP_DAYS", settings.keep_days)
    os.environ.setdefault("HELIOS_UI_SPECS", str(settings.ui_specs))
    return settings


def storage_resource(settings: Settings):
    """The deployment's storage resource, as the code location and the CLI build it."""
    from helios_pipeline.dagster_defs.storage import RenderStorage

    return RenderStorage(location=settings.storage, keep_days=settings.keep_days)
