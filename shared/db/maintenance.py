"""Vacuum and analyze the tables a steady load churns, for a server whose autovacuum is off.

An operator setting, off by default: ``STRATUS_DB_VACUUM=true`` on the scheduler (see
``SchedulerSettings.db_vacuum``). Every job updates its ``jobs`` row four times and inserts
and deletes three ``outbox`` rows. The dead row versions this leaves stay in the tables and in
their partial indexes (the pending, dispatchable and active jobs; the outbox's head) until a
vacuum removes them, and every scan of those indexes walks over them, so without autovacuum
PostgreSQL's CPU per job grows with every job run; without ANALYZE the planner also keeps the
statistics of empty tables.

Where the server's ``autovacuum`` is ``off``, ``maintain`` does what autovacuum would, on the
same two counters: it vacuums each table of the schema whose dead rows reach
``min_dead_rows`` and ``VACUUM_FRACTION`` of its live rows, and analyzes each table whose rows
changed since its last ANALYZE by ``min_dead_rows`` and ``ANALYZE_FRACTION`` of its live rows.
The two are apart because their costs are: a VACUUM of ``jobs`` reads every index of the
table and is what keeps the hot partial indexes short, while an ANALYZE only refreshes
statistics whose shape (a few states, a growing history) changes slowly, so it runs at a
wider fraction. Both fractions make the work per job level off as a table grows instead of
growing with it. With autovacuum on it does nothing: that is autovacuum's job. One scheduler
at a time (an advisory lock); VACUUM runs outside any transaction, without the statement
timeout, on a plain asyncpg connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import advisory
from shared.db.raw import raw_connection
from shared.logging import get_logger

log = get_logger(__name__)

LOCK_KEY = advisory.MAINTENANCE  # one maintainer per database

VACUUM_FRACTION = 0.2  # autovacuum_vacuum_scale_factor's default
ANALYZE_FRACTION = 0.5

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


async def maintain(engine: AsyncEngine, *, min_dead_rows: int = 1000, force: bool = False) -> Done:
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
                name
                for name, live, dead, _ in rows
                if _due(dead, live, min_rows=min_dead_rows, fraction=VACUUM_FRACTION)
            ]
            analyze = [
                name
                for name, live, _, changed in rows
                if _due(changed, live, min_rows=min_dead_rows, fraction=ANALYZE_FRACTION)
            ]
            if vacuum or analyze:
                await conn.execute("SET statement_timeout = 0")
                try:  # names from the catalog, quoted by quote_ident
                    for table in vacuum:
                        await conn.execute(f"VACUUM {table}")
                    for table in analyze:
                        await conn.execute(f"ANALYZE {table}")
                finally:
                    await conn.execute("RESET statement_timeout")
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    if vacuum or analyze:
        log.info("database_maintained", vacuumed=vacuum, analyzed=analyze)
    return Done(vacuum, analyze)
