"""Vacuum and analyze the tables a steady load churns, for a server whose autovacuum is off.

An operator setting, off by default: ``STRATUS_DB_VACUUM=true`` on the scheduler (see
``SchedulerSettings.db_vacuum``). Every job updates its ``jobs`` row four times and inserts
and deletes three ``outbox`` rows. The dead row versions this leaves stay in the tables and in
their partial indexes (the pending, dispatchable and active jobs; the outbox's head) until a
vacuum removes them, and every scan of those indexes walks over them, so without autovacuum
PostgreSQL's CPU per job grows with every job run; without ANALYZE the planner also keeps the
statistics of empty tables.

Where the server's ``autovacuum`` is ``off``, ``maintain`` vacuums (with ANALYZE) each table of
the schema whose dead rows reach ``min_dead_rows`` and a fraction of its live rows, and
analyzes the tables that changed as much since their last ANALYZE. With autovacuum on it does
nothing: that is autovacuum's job. One scheduler at a time (an advisory lock); VACUUM runs
outside any transaction, without the statement timeout, on a plain asyncpg connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import advisory
from shared.db.raw import raw_connection
from shared.logging import get_logger

log = get_logger(__name__)

LOCK_KEY = advisory.MAINTENANCE  # one maintainer per database

_TABLES = """
SELECT quote_ident(relname), n_live_tup, n_dead_tup, n_mod_since_analyze
FROM pg_stat_user_tables WHERE schemaname = current_schema()
"""


@dataclass(frozen=True)
class Done:
    vacuumed: list[str] = field(default_factory=list)
    analyzed: list[str] = field(default_factory=list)


def _due(changed: int, live: int, *, min_rows: int, fraction: float) -> bool:
    return changed >= max(min_rows, fraction * live)


async def maintain(
    engine: AsyncEngine, *, min_dead_rows: int = 1000, fraction: float = 0.1, force: bool = False
) -> Done:
    """Vacuum/analyze what is due (see the module docstring); ``force`` also where the
    server's autovacuum is on (tests)."""
    async with raw_connection(engine) as conn:
        if not force and await conn.fetchval("SELECT current_setting('autovacuum')") == "on":
            return Done()
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
            return Done()  # another scheduler is at it
        try:
            rows = await conn.fetch(_TABLES)
            vacuum = [
                r[0] for r in rows if _due(r[2], r[1], min_rows=min_dead_rows, fraction=fraction)
            ]
            analyze = [
                r[0]
                for r in rows
                if r[0] not in vacuum
                and _due(r[3], r[1], min_rows=min_dead_rows, fraction=fraction)
            ]
            if vacuum or analyze:
                await conn.execute("SET statement_timeout = 0")
                try:
                    for table in vacuum:  # names from the catalog, quoted by quote_ident
                        await conn.execute(f"VACUUM (ANALYZE) {table}")
                    for table in analyze:
                        await conn.execute(f"ANALYZE {table}")
                finally:
                    await conn.execute("RESET statement_timeout")
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    if vacuum or analyze:
        log.info("database_maintained", vacuumed=vacuum, analyzed=analyze)
    return Done(vacuum, analyze)
