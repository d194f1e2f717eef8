"""The databases and vhosts a test run makes, made quickly.

A migration to head is an ``alembic`` subprocess of a few seconds, and the run makes a few
dozen databases (one per scheduler module, per cluster, ...). So the run migrates one
database, its template, which nothing ever connects to, and makes every other one as a copy
of it: ``CREATE DATABASE ... TEMPLATE`` takes a fraction of a second and gives the same
schema. Each ``rabbitmqctl`` call starts an Erlang VM (a second or two), so a vhost is made
and deleted with the fewest calls: ``add_vhost`` and ``set_permissions``, then
``delete_vhost``, without listing the vhosts first."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import asyncpg

from tools.provision import postgres_settings, prepare_database, rabbit_settings

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def template_of(run_database: str) -> str:
    """The migrated template of the run whose own database is ``run_database``."""
    return _checked(f"{run_database}_template")


def migrate_template(run_database: str) -> None:
    """Create and migrate the run's template (once, before the run's first database)."""
    prepare_database(template_of(run_database))


def copy_database(name: str, run_database: str) -> None:
    """Database ``name``, a copy of the run's template: migrated to head, and empty."""
    _admin(f'CREATE DATABASE "{_checked(name)}" TEMPLATE "{template_of(run_database)}"')


def new_vhost(name: str) -> None:
    """Vhost ``name``, with every permission for the broker user the services log in as."""
    _rabbitmqctl("add_vhost", _checked(name))
    _rabbitmqctl("set_permissions", "-p", name, rabbit_settings().user, ".*", ".*", ".*")


def delete_vhost(name: str) -> None:
    """Delete vhost ``name`` and its queues (no error when it is not there)."""
    proc = _rabbitmqctl("delete_vhost", _checked(name), check=False)
    if proc.returncode != 0 and "does not exist" not in proc.stdout + proc.stderr:
        raise RuntimeError(f"rabbitmqctl delete_vhost {name} failed: {proc.stderr.strip()}")


def _checked(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a name for a test database or vhost: {name!r}")
    return name


def _admin(statement: str) -> None:
    """``statement`` on the ``postgres`` database, from a thread of its own (callers may be
    inside an event loop)."""
    pg = postgres_settings()

    async def run() -> None:
        conn = await asyncpg.connect(
            host=pg.host,
            port=pg.port,
            user=pg.user,
            password=pg.password.get_secret_value() or None,
            database="postgres",
        )
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: asyncio.run(run())).result()


def _rabbitmqctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("rabbitmqctl") or "rabbitmqctl"
    proc = subprocess.run(
        [exe, "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc
