"""Throwaway servers for the scale-out tests, on 127.0.0.1 only: PostgreSQL, Redis and an S3 API (moto).

Each is started once per test session (``conftest.py`` exposes them as fixtures) and stopped at
its end; tests get a fresh database or bucket of their own, so the damage one test does (a
half-finished run, a stale object) cannot hide in another's results.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
START_TIMEOUT_S = 30
POSTGRES_USER = "dagster"  # the cluster's superuser (trust authentication: loopback only, throwaway)
S3_REGION = "us-east-1"


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    """Until something accepts connections on ``port``; a clear error when ``process`` died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before listening on {HOST}:{port}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {HOST}:{port} within {timeout:.0f} s")


def _binary(name: str) -> str:
    """A PostgreSQL or Redis program: on PATH, else in Debian's versioned Postgres folder."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"{name} is not installed: run `bash scripts/setup` (it installs it through apt)")
    return found


# --- PostgreSQL -----------------------------------------------------------------------------------


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in a temporary folder, listening on 127.0.0.1:``port`` (fsync off)."""

    port: int
    folder: Path
    databases: list[str] = field(default_factory=list)
    host: str = HOST
    user: str = POSTGRES_USER

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database with a unique name; returns its name."""
        import psycopg2

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        connection = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname="postgres")
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        self.databases.append(name)
        return name

    def storage_config(self, database: str) -> dict[str, Any]:
        """The ``storage:`` block of a dagster.yaml that uses ``database`` (see deploy/celery/dagster.yaml)."""
        return {
            "postgres": {
                "postgres_db": {
                    "username": self.user,
                    "password": "",
                    "hostname": self.host,
                    "port": self.port,
                    "db_name": database,
                    "scheme": "postgresql+psycopg2",
                }
            }
        }


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and pg_ctl refuse to run as root: run them as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def start_postgres() -> PostgresServer:
    """initdb + pg_ctl start in a new folder under the system temp dir (the postgres user must reach it)."""
    folder = Path(tempfile.mkdtemp(prefix="helios-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    initdb = [_binary("initdb"), "-D", str(data), "-A", "trust", "-U", POSTGRES_USER, "--no-sync", "-E", "UTF8"]
    options = f"-p {port} -k {folder} -c listen_addresses={HOST} -c fsync=off -c synchronous_commit=off"
    start = [_binary("pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "30", "-o", options, "start"]
    try:
        subprocess.run(_as_postgres(initdb), check=True, capture_output=True, timeout=120)
        subprocess.run(_as_postgres(start), check=True, capture_output=True, timeout=60)
    except subprocess.CalledProcessError as exc:
        log = (folder / "log").read_text(errors="replace")[-2000:] if (folder / "log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr.decode(errors='replace')}{log}") from None
    return PostgresServer(port=port, folder=folder)


def stop_postgres(server: PostgresServer) -> None:
    stop = [_binary("pg_ctl"), "-D", str(server.folder / "data"), "-m", "immediate", "-w", "-t", "30", "stop"]
    subprocess.run(_as_postgres(stop), capture_output=True, timeout=60)
    shutil.rmtree(server.folder, ignore_errors=True)


@contextlib.contextmanager
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        stop_postgres(server)


# --- Redis ----------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen
    host: str = HOST

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"


@contextlib.contextmanager
def redis() -> Iterator[RedisServer]:
    """Debian's redis-server on a free port, in memory only (no RDB snapshots, no AOF)."""
    port = free_port()
    command = [_binary("redis-server"), "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, START_TIMEOUT_S, "redis-server", process)
        yield RedisServer(port=port, process=process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- S3 (moto's server mode) ----------------------------------------------------------------------


@dataclass
class S3Server:
    """moto's S3 API on 127.0.0.1:``port``; it accepts any credentials (it checks no signature)."""

    port: int
    server: Any

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        """What boto3 (and so the workers) needs to talk to this server, as environment variables."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_REGION": S3_REGION,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def client(self) -> Any:
        import boto3

        env = self.env()
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=S3_REGION,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, prefix: str = "helios-test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name


@contextlib.contextmanager
def s3() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    try:
        _host, port = server.get_host_and_port()
        yield S3Server(port=port, server=server)
    finally:
        server.stop()
