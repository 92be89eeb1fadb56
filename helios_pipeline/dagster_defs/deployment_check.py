"""Preflight for a scale-out deployment: are the instance's Postgres and the Celery broker reachable?

Without it an unreachable server shows up late and badly: a submit that hangs in a TCP connect for
minutes, a run launched into a broker nobody reads, or a traceback from deep inside SQLAlchemy or
kombu. Each check here is bounded (a few seconds) and fails with the server's host:port and the
call that failed. A deployment that uses neither (one machine, SQLite, local runs) checks nothing.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # the CLI imports this module: keep `import dagster` out of its start-up
    import dagster as dg

CHECK_TIMEOUT_S = 3


class DeploymentUnreachable(Exception):
    """A server the deployment needs (Postgres, the Celery broker) does not answer."""


def check_deployment(instance: dg.DagsterInstance) -> None:
    """Raise ``DeploymentUnreachable`` when the instance's Postgres or the Celery launcher's Redis is down."""
    postgres_url = getattr(instance.run_storage, "postgres_url", None)
    if postgres_url:
        check_postgres(postgres_url, "instance storage (dagster.yaml `storage`)")
    launcher = instance.run_launcher
    if type(launcher).__name__ == "CeleryRunLauncher":  # dagster-celery's or ours; no import: an optional extra
        check_celery_urls(getattr(launcher, "broker", None), getattr(launcher, "backend", None), "dagster.yaml")


def check_celery_urls(broker: str | None, backend: str | None, source: str) -> None:
    """The Celery broker (and a Redis result backend) answer PING; other transports are only resolved."""
    if not broker:
        raise DeploymentUnreachable(f"{source}: the Celery launcher has no broker URL (run_launcher.config.broker)")
    check_redis(broker, f"Celery broker ({source} broker)")
    if backend and backend.startswith(("redis://", "rediss://")) and backend != broker:
        check_redis(backend, f"Celery result backend ({source} backend)")


def check_redis(url: str, role: str) -> None:
    """PING ``url`` within CHECK_TIMEOUT_S; non-Redis URLs get a TCP connect to their host:port."""
    parts = urlsplit(url)
    address = f"{parts.hostname}:{parts.port or 6379}"
    if parts.scheme not in ("redis", "rediss"):
        _tcp_connect(parts.hostname or "", parts.port or 5672, f"{role} at {parts.hostname}:{parts.port}")
        return
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_S, socket_timeout=CHECK_TIMEOUT_S)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise DeploymentUnreachable(f"{role} at {address} is unreachable: PING failed: {exc}") from None
    finally:
        client.close()


def check_postgres(url: str, role: str) -> None:
    """Connect to ``url`` and run ``SELECT 1`` within CHECK_TIMEOUT_S."""
    import psycopg2
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    address = f"{parsed.host}:{parsed.port or 5432}"
    _tcp_connect(parsed.host or "localhost", parsed.port or 5432, f"Postgres of the {role} at {address}")
    try:
        connection = psycopg2.connect(
            host=parsed.host,
            port=parsed.port or 5432,
            user=parsed.username,
            password=parsed.password or "",
            dbname=parsed.database,
            connect_timeout=CHECK_TIMEOUT_S,
        )
    except psycopg2.Error as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeploymentUnreachable(
            f"Postgres of the {role} at {address} refused database {parsed.database!r}: connect failed: {message}"
        ) from None
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()


def _tcp_connect(host: str, port: int, what: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=CHECK_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise DeploymentUnreachable(f"{what} is unreachable: TCP connect failed: {reason}") from None


# --- checks from a dagster.yaml that has not been loaded yet (the worker checks before it starts) ---


def resolve_env(value: Any, where: str) -> Any:
    """``{env: VAR}`` values replaced by the variable's value (Dagster's StringSource/IntSource rule)."""
    import os

    if isinstance(value, Mapping):
        if set(value) == {"env"}:
            name = value["env"]
            if name not in os.environ:
                raise DeploymentUnreachable(f"{where}: environment variable {name} is not set")
            return os.environ[name]
        return {key: resolve_env(item, f"{where}.{key}") for key, item in value.items()}
    return value


def postgres_url_from_config(storage: Mapping[str, Any], where: str) -> str | None:
    """The Postgres URL of a dagster.yaml ``storage`` block (None for other storages)."""
    postgres = storage.get("postgres") if isinstance(storage, Mapping) else None
    if not postgres:
        return None
    resolved = resolve_env(postgres, f"{where} storage.postgres")
    from dagster_postgres.utils import pg_url_from_config

    return pg_url_from_config(resolved)


def check_instance_config(config_file: Path) -> None:
    """Check the servers a ``dagster.yaml`` names before Dagster opens it (opening a dead Postgres hangs, then
    fails with a traceback); a config without Postgres or Celery checks nothing."""
    import yaml

    if not config_file.is_file():
        return
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise DeploymentUnreachable(f"{config_file}: not valid YAML: {exc}") from None
    if not isinstance(config, Mapping):
        return
    postgres_url = postgres_url_from_config(config.get("storage") or {}, str(config_file))
    if postgres_url:
        check_postgres(postgres_url, f"instance storage ({config_file} `storage`)")
    launcher = config.get("run_launcher") or {}
    if isinstance(launcher, Mapping) and launcher.get("class") == "CeleryRunLauncher":
        settings = resolve_env(launcher.get("config") or {}, f"{config_file} run_launcher.config")
        check_celery_urls(settings.get("broker"), settings.get("backend"), str(config_file))
