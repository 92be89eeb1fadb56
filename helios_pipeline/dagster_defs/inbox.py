"""The inbox folder (HELIOS_INBOX): the spec files the sensor and the schedules read."""

from pathlib import Path

SPEC_PATTERNS = ("*.yaml", "*.yml", "*.json")


def inbox_specs(inbox: Path) -> list[Path]:
    return sorted(path for pattern in SPEC_PATTERNS for path in inbox.glob(pattern) if path.is_file())
