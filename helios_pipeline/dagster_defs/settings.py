"""Deployment settings, read from the environment once per code-location load."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MAX_CHUNKS = 4


@dataclass(frozen=True)
class Settings:
    storage: Path
    inbox: Path
    max_chunks: int

    @classmethod
    def from_env(cls) -> Settings:
        """HELIOS_STORAGE (default .helios/), HELIOS_INBOX (default compositions/), HELIOS_MAX_CHUNKS (4)."""
        raw_chunks = os.environ.get("HELIOS_MAX_CHUNKS", str(DEFAULT_MAX_CHUNKS))
        try:
            max_chunks = int(raw_chunks)
        except ValueError:
            raise ValueError(f"HELIOS_MAX_CHUNKS must be a whole number, got {raw_chunks!r}") from None
        if not 1 <= max_chunks <= 999:
            raise ValueError(f"HELIOS_MAX_CHUNKS must be between 1 and 999, got {max_chunks}")
        return cls(
            storage=Path(os.environ.get("HELIOS_STORAGE") or PROJECT_ROOT / ".helios").resolve(),
            inbox=Path(os.environ.get("HELIOS_INBOX") or PROJECT_ROOT / "compositions").resolve(),
            max_chunks=max_chunks,
        )


def chunk_keys(max_chunks: int) -> list[str]:
    return [f"{index:03d}" for index in range(max_chunks)]
