"""The worker's and the dispatch pass's fixed statements reuse their generic plans
(``shared.db.engine.GENERIC_PLANS``).

With PostgreSQL's default (``plan_cache_mode = auto``), a prepared statement keyed by an array
of ids is planned again at nearly every execution once the tables have statistics: a plan made
for the values at hand expects the array's few ids and looks cheaper than the generic plan,
which expects 100 (``bench/job_cost.py --statements`` counts the plans per call). Here the
worker's claim is prepared, run six times (past the five custom plans after which PostgreSQL
may switch) and explained: with the default, in a database with statistics, its plan is made
for the values (the constant array); in the worker's sessions and in a dispatch pass it is the
generic one (``unnest($1)``), and the pass leaves its connection as it found it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from services.scheduler.service import open_pass
from shared.db.engine import GENERIC_PLANS, make_engine
from shared.db.raw import raw_connection
from shared.jobs.store import CLAIM_QUEUED
from shared.settings import CommonSettings
from tests.factories import copy_jobs, own_database, template_job


async def _claim_plan(conn: Any) -> str:
    """The plan of the claim's seventh execution (no job matches: nothing changes)."""
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(
            "PREPARE claim_probe (uuid[], text, timestamptz, timestamptz) AS " + CLAIM_QUEUED
        )
        # EXECUTE takes no bind parameters: the values are literals (a random id, no job)
        args = f"('{{{uuid.uuid4()}}}', 'probe', now(), now() + interval '60 seconds')"
        for _ in range(6):
            await conn.fetch("EXECUTE claim_probe " + args)
        rows = await conn.fetch("EXPLAIN (VERBOSE) EXECUTE claim_probe " + args)
        return "\n".join(r[0] for r in rows)
    finally:
        await tx.rollback()
        await conn.execute("DEALLOCATE claim_probe")  # a PREPARE outlives the rollback


def _generic(plan: str) -> bool:
    """The ids' array is the parameter, not the constant a custom plan is made for."""
    return "unnest($1)" in plan


@pytest.fixture(scope="module")
async def analyzed(settings: CommonSettings) -> AsyncIterator[AsyncEngine]:
    """A database with 3,000 finished jobs and their statistics (the shape of a cluster that
    has run for a while; in an empty one PostgreSQL's estimates differ)."""
    async with own_database(settings, "generic_plans") as (_, sessions):
        await template_job(sessions, "plans")
        await copy_jobs(sessions, "SUCCEEDED", 1, 3000)
        engine = sessions.kw["bind"]
        async with raw_connection(engine) as conn:
            await conn.execute("ANALYZE")
        yield engine


async def test_postgresqls_default_plans_the_claim_for_its_values_every_time(
    analyzed: AsyncEngine,
) -> None:
    """What the setting avoids: with ``auto``, the claim is still planned for its values at
    its seventh execution."""
    async with raw_connection(analyzed) as conn:
        assert await conn.fetchval("SHOW plan_cache_mode") == "auto"
        plan = await _claim_plan(conn)
        assert not _generic(plan), plan
        await conn.execute(f"SET plan_cache_mode = {GENERIC_PLANS}")
        try:
            assert _generic(await _claim_plan(conn))
        finally:
            await conn.execute("RESET plan_cache_mode")


async def test_the_workers_sessions_reuse_the_generic_plan(settings: CommonSettings) -> None:
    engine = make_engine(settings.postgres, application_name="stratus-tests", generic_plans=True)
    try:
        async with raw_connection(engine) as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
            assert _generic(await _claim_plan(conn))
    finally:
        await engine.dispose()


async def test_a_dispatch_pass_reuses_generic_plans_and_leaves_the_connection_as_it_was(
    engine: AsyncEngine, sessions: async_sessionmaker[Any]
) -> None:
    async with open_pass(engine, sessions) as p:
        assert await p.conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
        assert _generic(await _claim_plan(p.conn))
    async with raw_connection(engine) as conn:  # the same connection (the pool is LIFO)
        assert await conn.fetchval("SHOW plan_cache_mode") == "auto"  # SET LOCAL: gone
