"""shared.db.raw: plain asyncpg from the SQLAlchemy pool; a broken connection is replaced."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.engine import is_connectivity_error
from shared.db.raw import raw_connection
from shared.settings import CommonSettings


async def test_runs_in_its_own_transaction(engine: AsyncEngine) -> None:
    async with raw_connection(engine) as conn:
        await conn.execute("CREATE TEMP TABLE raw_t (v int)")

        async def insert_then_fail() -> None:
            async with conn.transaction():
                await conn.execute("INSERT INTO raw_t VALUES (1)")
                raise RuntimeError("roll back")

        with pytest.raises(RuntimeError):
            await insert_then_fail()
        async with conn.transaction():
            await conn.execute("INSERT INTO raw_t VALUES (2)")
        assert [r["v"] for r in await conn.fetch("SELECT v FROM raw_t")] == [2]
        await conn.execute("DROP TABLE raw_t")


async def test_a_killed_backend_is_a_connectivity_error_and_is_replaced(
    engine: AsyncEngine, settings: CommonSettings
) -> None:
    async with raw_connection(engine) as conn:
        victim = await conn.fetchval("SELECT pg_backend_pid()")
    async with raw_connection(engine) as other:
        # The pool hands out its most recent connection first (LIFO), so the check-out above
        # may be the same one: find a connection that is not the victim to kill it from.
        if await other.fetchval("SELECT pg_backend_pid()") == victim:
            async with raw_connection(engine) as third:
                assert await third.fetchval("SELECT pg_terminate_backend($1)", victim)
        else:
            assert await other.fetchval("SELECT pg_terminate_backend($1)", victim)
    caught: BaseException | None = None
    for _ in range(settings.postgres.pool_size + 2):  # reach the dead one, wherever it is
        try:
            async with raw_connection(engine) as conn:
                await conn.fetchval("SELECT 1")
        except Exception as exc:
            caught = exc
            break
    assert caught is not None
    assert is_connectivity_error(caught)
    async with raw_connection(engine) as conn:  # the pool replaced it
        assert await conn.fetchval("SELECT pg_backend_pid()") != victim


async def test_a_transaction_cancelled_while_it_began_is_not_left_on_the_connection(
    engine: AsyncEngine, settings: CommonSettings
) -> None:
    """asyncpg keeps a transaction whose ``BEGIN`` was cancelled as the connection's current
    one: the next ``transaction()`` on it would only be a savepoint whose "commit" commits
    nothing (an outbox relay stopped at that moment made the next one's deletes vanish).
    Such a connection must not go back to the pool as it is."""
    pids: list[int] = []

    async def begin_cancelled() -> None:
        async with raw_connection(engine) as conn:
            pids.append(await conn.fetchval("SELECT pg_backend_pid()"))
            start = asyncio.ensure_future(conn.transaction().start())
            await asyncio.sleep(0)  # BEGIN is on its way
            start.cancel()
            await start

    with pytest.raises(asyncio.CancelledError):
        await begin_cancelled()
    for _ in range(settings.postgres.pool_size + 2):  # every pooled connection, that one too
        async with raw_connection(engine) as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            async with conn.transaction():
                await conn.fetchval("SELECT 1")
            assert not conn.is_in_transaction(), pid == pids[0]  # committed for real
