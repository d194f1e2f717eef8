"""Async engine and session factory (SQLAlchemy 2 + asyncpg)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from shared.db.raw import is_raw_connectivity_error
from shared.settings import PostgresSettings

# Generic plans: a prepared statement's plan is made once per connection and reused, instead
# of PostgreSQL's default (``plan_cache_mode = auto``), which plans again at each execution
# whenever a plan made for the values at hand looks cheaper than the generic one. For the hot
# fixed statements keyed by arrays of ids (``unnest($1::uuid[])``, ``id = ANY($1)``) it
# always does: made for the values, a plan expects the array's 1-2 ids, the generic one the
# default 100, so the worker's claim and record and the dispatch pass's statements were
# planned again at nearly every call, about a third of what PostgreSQL spent on them
# (docs/BENCHMARKS.md, "Planning on every call"). Their plans do not depend on the values
# (every row is found by its id), so they take the generic plan. Not for every statement: a
# generic plan cannot use a partial index whose condition a parameter decides (``state =
# $1``), which statements built with SQLAlchemy bind as parameters.
GENERIC_PLANS = "force_generic_plan"
SET_LOCAL_GENERIC_PLANS = f"SET LOCAL plan_cache_mode = {GENERIC_PLANS}"


def make_engine(
    settings: PostgresSettings, *, application_name: str = "stratus", generic_plans: bool = False
) -> AsyncEngine:
    """The service's engine; ``generic_plans`` for a service whose statements are all found
    by id (the worker's): its sessions reuse each prepared statement's generic plan
    (``GENERIC_PLANS``)."""
    server_settings = {
        "application_name": application_name,
        "statement_timeout": str(settings.statement_timeout_ms),
        "jit": "on" if settings.jit else "off",
    }
    if generic_plans:
        server_settings["plan_cache_mode"] = GENERIC_PLANS
    engine = create_async_engine(
        settings.url(),
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        # No ping per checkout (a round trip per transaction): a connection broken by a
        # database restart fails its first use, is invalidated, and the pool reconnects.
        pool_pre_ping=False,
        # Most recently used first: the few connections a steady load needs stay hot, with
        # their prepared statements and introspected types (plain asyncpg on hot paths,
        # shared.db.raw, prepares per connection); FIFO would cycle through the whole pool,
        # and each connection would prepare each statement again.
        pool_use_lifo=True,
        pool_timeout=settings.connect_timeout_s,
        connect_args={
            "timeout": settings.connect_timeout_s,
            "ssl": settings.ssl,
            "command_timeout": settings.statement_timeout_ms / 1000,
            "server_settings": server_settings,
        },
    )
    event.listen(engine.sync_engine, "do_connect", _connect)
    return engine


def _connect(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
    """Open a connection; a network failure on the way (refused, no route, a name that does
    not resolve, a timeout) is raised as the driver's ``OperationalError``, as SQLAlchemy
    raises every other failure of the database, so that what says "the database is away" is
    a database error by type and never a bare ``OSError``, which a file raises too."""
    try:
        return dialect.connect(*cargs, **cparams)
    except OSError as exc:
        failed = dialect.loaded_dbapi.OperationalError
        raise failed(f"cannot connect to the database: {exc}") from exc


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One unit of work: commits on success, rolls back on any exception."""
    async with sessions() as session, session.begin():
        yield session


def is_connectivity_error(exc: BaseException) -> bool:
    """True when ``exc`` says the database could not be reached (not a bad query). Only the
    database's own errors count: what a block raises otherwise (a file's ``OSError``, a
    storage tier's, a tenant's mistake) says nothing about the database."""
    # A pool timeout is overload (every connection busy), not an outage: it does not count.
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if is_raw_connectivity_error(exc):  # plain asyncpg (shared.db.raw), unwrapped
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def is_overload_error(exc: BaseException) -> bool:
    """True when the server refused for want of resources (SQLSTATE class 53: too many
    connections, out of memory or disk): a 503 to retry shortly, not an outage and not the
    request's fault. SQLAlchemy wraps the driver's error; plain asyncpg raises it as is."""
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    while cause is not None:
        if isinstance(cause, asyncpg.InsufficientResourcesError):
            return True
        cause = cause.__cause__
    return False


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
