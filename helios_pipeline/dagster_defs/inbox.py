"""The spec folders: the inbox (HELIOS_INBOX) the sensor renders from, and the UI's folder (HELIOS_UI_SPECS).

A spec in the inbox is rendered on arrival, with no click. A spec in the UI's folder waits for a
person: it is rendered when a partition of its name is added and launched in the UI. The sensor
never reads the UI's folder, so adding that partition cannot race it.
"""

from pathlib import Path

import dagster as dg

from helios_pipeline.dagster_defs.settings import UI_SUBFOLDER

SPEC_PATTERNS = ("*.yaml", "*.yml", "*.json")
SPEC_SUFFIXES = (".yaml", ".yml", ".json")


class Inbox(dg.ConfigurableResource):
    """The folders of spec files that become renders: the sensor's inbox, and the UI's folder."""

    folder: str
    ui_folder: str = ""
    """Specs started from the UI (default ``<folder>/ui``)."""

    @property
    def path(self) -> Path:
        return Path(self.folder).expanduser().resolve()

    @property
    def ui_path(self) -> Path:
        return Path(self.ui_folder).expanduser().resolve() if self.ui_folder else self.path / UI_SUBFOLDER


def inbox_specs(inbox: Path) -> list[Path]:
    return sorted(path for pattern in SPEC_PATTERNS for path in inbox.glob(pattern) if path.is_file())


def spec_named(folder: Path, key: str) -> Path | None:
    """The spec file ``<folder>/<key>.yaml`` (or ``.yml``, ``.json``), if there is one."""
    for suffix in SPEC_SUFFIXES:
        candidate = folder / f"{key}{suffix}"
        if candidate.is_file():
            return candidate
    return None
