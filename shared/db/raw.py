"""Plain asyncpg on a hot path, from the same pool as SQLAlchemy.

SQLAlchemy's statement building, cache keys and session bookkeeping cost more than the
query itself on paths that run once per job (docs/BENCHMARKS.md). ``raw_connection`` checks
a connection out of the engine's pool and hands over the asyncpg connection underneath: one
pool, one set of settings (statement timeout, application name, TLS), and a connection that
fails with a connectivity error is invalidated so the pool replaces it. The caller runs
fixed SQL text (asyncpg prepares and caches each statement per connection) and manages its
own transaction (``async with conn.transaction()``).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

# asyncpg's own errors for a database that cannot be reached or a connection that broke:
# SQLAlchemy wraps these as OperationalError/InterfaceError, but raw use sees them bare.
RAW_CONNECTIVITY: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    # A backend terminated while the connection sat idle can leave the protocol in a state
    # where the next query fails with "cannot switch to state ...": the connection is gone.
    asyncpg.InternalClientError,
    # The network under the connection (refused, reset, timed out, a name that does not
    # resolve); never any OSError: a file's (a directory where a file should be) is no
    # sign of the database.
    ConnectionError,
    TimeoutError,
    socket.gaierror,
)


def is_raw_connectivity_error(exc: BaseException) -> bool:
    return isinstance(exc, RAW_CONNECTIVITY)


@asynccontextmanager
async def raw_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """An asyncpg ``Connection`` from ``engine``'s pool for the duration of the block."""
    async with pooled_connection(engine) as (_, driver):
        yield driver


@asynccontextmanager
async def pooled_connection(engine: AsyncEngine) -> AsyncIterator[tuple[AsyncConnection, Any]]:
    """``raw_connection`` with the SQLAlchemy connection it came from: a session bound to that
    one (``async_sessionmaker(bind=...)``) runs on the same asyncpg connection, and inside a
    transaction begun with ``driver.transaction()`` its own transaction is a savepoint (asyncpg
    nests it), for the rare step of a raw path that needs session-based code."""
    async with engine.connect() as conn:
        fairy = await conn.get_raw_connection()
        driver: Any = fairy.driver_connection
        try:
            yield conn, driver
        except BaseException as exc:
            if is_raw_connectivity_error(exc) or driver.is_closed() or _left_in_transaction(driver):
                fairy.invalidate(exc if isinstance(exc, Exception) else None)
            raise
        if _left_in_transaction(driver):  # a failure caught inside the block did it
            fairy.invalidate()


def _left_in_transaction(driver: Any) -> bool:
    """A block that failed (a cancellation, most often) while a transaction began or ended
    can leave it open: asyncpg keeps a transaction whose ``BEGIN`` was interrupted as the
    connection's current one (``_top_xact``), so the next ``transaction()`` there would be a
    mere savepoint whose commit commits nothing. The pool's reset does not see it (it only
    rolls back SQLAlchemy's own transactions), so such a connection is closed instead."""
    return bool(driver.is_in_transaction() or getattr(driver, "_top_xact", None) is not None)
