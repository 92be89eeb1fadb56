"""Shared fixtures: test compositions, a Helios core install from npm, process-leak checks."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from helios_pipeline.processes import CHUNK_ENV
from helios_pipeline_tests import services

COMPOSITIONS = Path(__file__).parent / "compositions"
HELIOS_CORE = "@helios-project/core@5.13.2"


@pytest.fixture(scope="session")
def helios_core_composition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Helios frame-index page with @helios-project/core installed beside it from npm."""
    folder = tmp_path_factory.mktemp("frame_helios")
    shutil.copy(COMPOSITIONS / "frame_helios" / "index.html", folder / "index.html")
    npm = shutil.which("npm")
    assert npm, "npm is required to install @helios-project/core for the Helios composition tests"
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(folder), HELIOS_CORE],
        check=True,
        timeout=300,
    )
    assert (folder / "node_modules/@helios-project/core/dist/index.js").is_file()
    return folder


def processes_for(work_dir: Path) -> list[psutil.Process]:
    """Live processes (worker, Chromium, FFmpeg) started for chunks under ``work_dir``, orphans included.

    Chunk workers export HELIOS_CHUNK_OUTPUT and every process they start inherits it.
    """
    found = []
    for process in psutil.process_iter():
        try:
            value = process.environ().get(CHUNK_ENV, "")
            if value.startswith(str(work_dir)) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


# --- scale-out services (helios_pipeline_tests/services.py): one server each per session, on 127.0.0.1 ---


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[services.PostgresServer]:
    with services.postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: services.PostgresServer) -> str:
    """A fresh, empty database of the session's cluster, for this test only."""
    return postgres_server.url(postgres_server.create_database())


@pytest.fixture(scope="session")
def redis_server() -> Iterator[services.RedisServer]:
    with services.redis() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[services.S3Server]:
    with services.s3() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: services.S3Server) -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh bucket for this test, and the AWS_* environment that reaches it (credentials, region, endpoint)."""
    yield s3_server.create_bucket(), s3_server.env()
