"""The inbox folder (HELIOS_INBOX): the spec files the sensor and the schedules read."""

from pathlib import Path

import dagster as dg

SPEC_PATTERNS = ("*.yaml", "*.yml", "*.json")


class Inbox(dg.ConfigurableResource):
    """The folder of spec files that become renders (the sensor's, and a UI-added partition's source)."""

    folder: str

    @property
    def path(self) -> Path:
        return Path(self.folder).expanduser().resolve()


def inbox_specs(inbox: Path) -> list[Path]:
    return sorted(path for pattern in SPEC_PATTERNS for path in inbox.glob(pattern) if path.is_file())
