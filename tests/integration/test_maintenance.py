"""shared.db.maintenance: churned tables are vacuumed (the CI server runs without autovacuum,
where dead outbox and jobs rows made every scan of their partial indexes slower)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler.leader import LEADER_LOCK
from shared.db.maintenance import LOCK_KEY, maintain
from shared.db.raw import raw_connection
from shared.settings import CommonSettings
from tests.factories import own_database

_INSERT = (
    "INSERT INTO outbox (message_id, routing_key, body) "
    "SELECT gen_random_uuid(), 'x', '\\x00' FROM generate_series(1, $1)"
)


async def _run(engine: AsyncEngine, *statements: tuple[Any, ...]) -> None:
    """Run ``statements`` (SQL, then its arguments) and publish the table counters."""
    async with raw_connection(engine) as conn:
        for sql, *args in statements:
            await conn.execute(sql, *args)
        await conn.execute("SELECT pg_stat_force_next_flush()")
    async with raw_connection(engine) as conn:  # the flush happens at the end of a statement
        await conn.execute("SELECT 1")


async def _churn(engine: AsyncEngine, rows: int) -> None:
    """Insert and delete ``rows`` outbox rows, as the relay does, and publish the counters."""
    await _run(engine, (_INSERT, rows), ("DELETE FROM outbox",))


async def _stat(engine: AsyncEngine, table: str, column: str) -> int:
    async with raw_connection(engine) as conn:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value = await conn.fetchval(
            f"SELECT {column} FROM pg_stat_user_tables WHERE relname = $1",  # noqa: S608
            table,
        )
    return int(value)


async def _dead(engine: AsyncEngine, table: str) -> int:
    return await _stat(engine, table, "n_dead_tup")


@asynccontextmanager
async def _held(engine: AsyncEngine, key: int) -> AsyncIterator[None]:
    """Session advisory lock ``key`` held by another connection for the block."""
    async with raw_connection(engine) as holder:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", key)
        try:
            yield
        finally:
            await holder.execute("SELECT pg_advisory_unlock($1)", key)


async def test_dead_rows_are_vacuumed_once_they_pile_up(settings: CommonSettings) -> None:
    async with own_database(settings, f"maint_{uuid.uuid4().hex[:6]}") as (_, sessions):
        engine = sessions.kw["bind"]
        await _churn(engine, 200)
        done = await maintain(engine, min_dead_rows=1000, force=True)
        assert "outbox" not in done.vacuumed  # 200 dead rows: below the threshold
        await _churn(engine, 2000)
        assert await _dead(engine, "outbox") >= 2000
        done = await maintain(engine, min_dead_rows=1000, force=True)
        assert "outbox" in done.vacuumed
        assert await _dead(engine, "outbox") == 0


async def test_one_maintainer_at_a_time(settings: CommonSettings) -> None:
    async with own_database(settings, f"maint_{uuid.uuid4().hex[:6]}") as (_, sessions):
        engine = sessions.kw["bind"]
        await _churn(engine, 2000)
        async with _held(engine, LOCK_KEY):
            assert (await maintain(engine, min_dead_rows=1000, force=True)).vacuumed == []
        assert "outbox" in (await maintain(engine, min_dead_rows=1000, force=True)).vacuumed


async def test_the_leader_vacuums_while_it_holds_the_leader_lock(settings: CommonSettings) -> None:
    """The leader runs the vacuum loop while its lock connection holds ``LEADER_LOCK``: the
    vacuum's own lock is another key, so it still runs (it once shared the key and never
    ran on a leader)."""
    async with own_database(settings, f"maint_{uuid.uuid4().hex[:6]}") as (_, sessions):
        engine = sessions.kw["bind"]
        await _churn(engine, 2000)
        async with _held(engine, LEADER_LOCK):
            done = await maintain(engine, min_dead_rows=1000, force=True)
        assert "outbox" in done.vacuumed
        assert await _dead(engine, "outbox") == 0


async def test_a_vacuum_leaves_the_statistics_until_the_table_changed_by_half(
    settings: CommonSettings,
) -> None:
    """VACUUM and ANALYZE come due apart: 10,000 rows inserted are analyzed (not vacuumed:
    nothing is dead); 2,500 of them deleted reach the vacuum's 20 % but not the analyze's
    50 %, so that pass vacuums without analyzing (an ANALYZE of ``jobs`` cost more than its
    vacuum); 3,000 more deleted reach the analyze's."""
    async with own_database(settings, f"maint_{uuid.uuid4().hex[:6]}") as (_, sessions):
        engine = sessions.kw["bind"]
        oldest = "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT $1)"
        await _run(engine, (_INSERT, 10000))
        done = await maintain(engine, min_dead_rows=1000, force=True)
        assert ("outbox" in done.analyzed, "outbox" in done.vacuumed) == (True, False)
        analyzed = await _stat(engine, "outbox", "analyze_count")
        await _run(engine, (oldest, 2500))
        done = await maintain(engine, min_dead_rows=1000, force=True)
        assert ("outbox" in done.analyzed, "outbox" in done.vacuumed) == (False, True)
        assert await _dead(engine, "outbox") == 0
        assert await _stat(engine, "outbox", "analyze_count") == analyzed
        await _run(engine, (oldest, 3000))
        done = await maintain(engine, min_dead_rows=1000, force=True)
        assert "outbox" in done.analyzed
        assert await _stat(engine, "outbox", "analyze_count") == analyzed + 1


async def test_the_payload_columns_of_jobs_gather_no_statistics(settings: CommonSettings) -> None:
    """What no query filters on (parameters, results, receipts) is left out of ANALYZE, and
    the columns the queries do filter on keep the server's default."""
    async with own_database(settings, f"maint_{uuid.uuid4().hex[:6]}") as (_, sessions):
        async with raw_connection(sessions.kw["bind"]) as conn:
            rows = await conn.fetch(
                "SELECT attname, attstattarget FROM pg_attribute "
                "WHERE attrelid = 'jobs'::regclass AND attnum > 0 AND NOT attisdropped"
            )
        targets = {r["attname"]: r["attstattarget"] for r in rows}
        for column in ("params", "result", "receipt", "error"):
            assert targets[column] == 0, column
        for column in ("state", "tenant_id", "labels", "created_at", "deps_left"):
            assert targets[column] in (-1, None), column
