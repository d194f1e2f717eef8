"""Create and drop what a Stratus deployment needs on the shared servers.

A PostgreSQL database (migrated to head) and a RabbitMQ vhost, each idempotent, plus the
``run/stratus.env`` secrets file. Server addresses come from ``STRATUS_POSTGRES__*`` /
``STRATUS_RABBIT__*`` in the given mapping (``os.environ`` when none is given).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from shared.settings import PostgresSettings, RabbitSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,62}")
_T = TypeVar("_T")


class ProvisionError(RuntimeError):
    """A database, vhost or env file could not be prepared."""


def _check_name(name: str, what: str) -> str:
    if not _NAME.fullmatch(name):
        raise ProvisionError(f"invalid {what} name {name!r} (letters, digits, _ and -)")
    return name


def _block(env: Mapping[str, str] | None, prefix: str) -> dict[str, str]:
    src = os.environ if env is None else env
    return {k[len(prefix) :].lower(): v for k, v in src.items() if k.startswith(prefix)}


def postgres_settings(env: Mapping[str, str] | None = None) -> PostgresSettings:
    """The ``STRATUS_POSTGRES__*`` block of ``env`` (default ``os.environ``)."""
    return PostgresSettings.model_validate(_block(env, "STRATUS_POSTGRES__"))


def rabbit_settings(env: Mapping[str, str] | None = None) -> RabbitSettings:
    """The ``STRATUS_RABBIT__*`` block of ``env`` (default ``os.environ``)."""
    return RabbitSettings.model_validate(_block(env, "STRATUS_RABBIT__"))


def _run_sync(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion, also when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


async def _admin(pg: PostgresSettings, statement: str, name: str) -> bool:
    """Run ``statement`` on the ``postgres`` database; return whether ``name`` exists after."""
    admin = pg.model_copy(update={"database": "postgres"})
    engine = create_async_engine(admin.url(), isolation_level="AUTOCOMMIT")
    probe = text("SELECT 1 FROM pg_database WHERE datname = :name")
    try:
        async with engine.connect() as conn:
            try:
                await conn.execute(text(statement))
            except Exception:
                # A concurrent CREATE may have won the race: then the database is there.
                await conn.rollback()
                if statement.startswith("CREATE") and await conn.scalar(probe, {"name": name}):
                    return True
                raise
            return bool(await conn.scalar(probe, {"name": name}))
    finally:
        await engine.dispose()


async def _exists(pg: PostgresSettings, name: str) -> bool:
    return await _admin(pg, "SELECT 1", name)


def _migration_env(pg: PostgresSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATUS_")}
    env.update(
        STRATUS_POSTGRES__HOST=pg.host,
        STRATUS_POSTGRES__PORT=str(pg.port),
        STRATUS_POSTGRES__USER=pg.user,
        STRATUS_POSTGRES__PASSWORD=pg.password.get_secret_value(),
        STRATUS_POSTGRES__DATABASE=pg.database,
    )
    return env


def migrate(pg: PostgresSettings, *, revision: str = "head") -> None:
    """``alembic upgrade <revision>`` against ``pg.database`` (in a subprocess)."""
    cmd = [sys.executable, "-m", "alembic", "-c", str(REPO_ROOT / "alembic.ini")]
    proc = subprocess.run(
        [*cmd, "upgrade", revision],
        cwd=REPO_ROOT,
        env=_migration_env(pg),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise ProvisionError(f"alembic upgrade {revision} on {pg.database} failed:\n{tail}")


def prepare_database(name: str, *, env: Mapping[str, str] | None = None) -> None:
    """Create database ``name`` if missing, then migrate it to head."""
    pg = postgres_settings(env).model_copy(update={"database": _check_name(name, "database")})
    if not _run_sync(lambda: _exists(pg, name)):
        created = _run_sync(lambda: _admin(pg, f'CREATE DATABASE "{name}"', name))
        if not created:
            raise ProvisionError(f"could not create database {name!r}")
    migrate(pg)


def drop_database(name: str, *, env: Mapping[str, str] | None = None) -> None:
    """Drop database ``name`` (closing its connections); no error when it is missing."""
    pg = postgres_settings(env)
    statement = f'DROP DATABASE IF EXISTS "{_check_name(name, "database")}" WITH (FORCE)'
    if _run_sync(lambda: _admin(pg, statement, name)):
        raise ProvisionError(f"database {name!r} still exists after DROP")


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        raise ProvisionError("rabbitmqctl not found (run scripts/ensure-servers.sh)")
    return subprocess.run(
        [exe, "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )


def _vhosts() -> set[str]:
    proc = _rabbitmqctl("list_vhosts", "--no-table-headers", "name")
    if proc.returncode != 0:
        raise ProvisionError(f"rabbitmqctl list_vhosts failed: {proc.stderr.strip()}")
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()}


def prepare_vhost(name: str, *, env: Mapping[str, str] | None = None) -> None:
    """Create vhost ``name`` (if missing) and give the Stratus broker user full permissions."""
    user = rabbit_settings(env).user
    if _check_name(name, "vhost") not in _vhosts():
        proc = _rabbitmqctl("add_vhost", name)
        if proc.returncode != 0 and name not in _vhosts():
            raise ProvisionError(f"rabbitmqctl add_vhost {name} failed: {proc.stderr.strip()}")
    proc = _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
    if proc.returncode != 0:
        raise ProvisionError(f"rabbitmqctl set_permissions failed: {proc.stderr.strip()}")


def drop_vhost(name: str) -> None:
    """Delete vhost ``name`` and its queues; no error when it is missing."""
    if _check_name(name, "vhost") not in _vhosts():
        return
    proc = _rabbitmqctl("delete_vhost", name)
    if proc.returncode != 0 and name in _vhosts():
        raise ProvisionError(f"rabbitmqctl delete_vhost {name} failed: {proc.stderr.strip()}")


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (``#`` comments, optional ``export`` and quotes) as a dict."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


SECRET_KEYS = ("STRATUS_ADMIN_KEY", "STRATUS_KEY_SECRET")
ENV_FILE_HEADER = """\
# Stratus local deployment settings (mode 600), written by `python -m tools.cluster`.
# Keep the key secret: stored API key hashes depend on it. Read the admin key with
#   grep '^STRATUS_ADMIN_KEY=' run/stratus.env | cut -d= -f2-
# The same file feeds docker compose: docker compose --env-file run/stratus.env up -d
"""


def ensure_env_file(path: Path, defaults: Mapping[str, str]) -> dict[str, str]:
    """Read ``path``, adding generated secrets and ``defaults`` for keys it lacks (mode 600)."""
    values = read_env_file(path) if path.exists() else {}
    added = {key: secrets.token_urlsafe(32) for key in SECRET_KEYS if not values.get(key)}
    added |= {key: value for key, value in defaults.items() if key not in values}
    if added:
        values |= added
        path.parent.mkdir(parents=True, exist_ok=True)
        body = ENV_FILE_HEADER + "".join(f"{k}={v}\n" for k, v in values.items())
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(body)
        os.replace(tmp, path)
    os.chmod(path, 0o600)
    return values
