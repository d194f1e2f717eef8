"""Stratus's sessions run with PostgreSQL's JIT compiler off (``PostgresSettings.jit``).

The reaper's statement for lost chunks (``shared.jobs.chunks``) is set-based over
``generate_series``: the planner estimates millions of rows for it, past the JIT thresholds,
though on a healthy cluster it touches none. In a session with JIT on, PostgreSQL compiled it
with LLVM on every reaper pass (about a second of CPU each time, measured with
``bench/job_cost.py --statements``); in Stratus's sessions it is not compiled at all."""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.raw import raw_connection
from shared.jobs.chunks import _REQUEUE
from shared.settings import CommonSettings


async def _plan(conn: Any) -> list[str]:
    """EXPLAIN ANALYZE of the lost chunks' statement, rolled back."""
    tx = conn.transaction()
    await tx.start()
    try:
        return [row[0] for row in await conn.fetch("EXPLAIN (ANALYZE) " + _REQUEUE, 100)]
    finally:
        await tx.rollback()


def _compiled(plan: list[str]) -> bool:
    return any(line.startswith("JIT:") for line in plan)


async def test_stratus_sessions_run_without_jit(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert (await conn.execute(text("SHOW jit"))).scalar_one() == "off"
    async with raw_connection(engine) as conn:
        assert not _compiled(await _plan(conn))


async def test_the_reapers_statement_is_jit_compiled_in_a_default_session(
    settings: CommonSettings,
) -> None:
    """What the setting avoids: in a session with the server's defaults (JIT on, as
    PostgreSQL ships), the same statement is compiled."""
    pg = settings.postgres
    conn = await asyncpg.connect(pg.url(driver="postgresql"), server_settings={"jit": "on"})
    try:
        assert _compiled(await _plan(conn))
    finally:
        await conn.close()
