"""The statements that change listed jobs find each row by its id, however stale the planner's
statistics of the queue are (``shared.jobs.store``, BY_ID_ONLY).

The statistics of ``jobs.state`` are what the last ANALYZE saw: taken while nothing waited,
they make a backlog that came later look empty. With a plain ``state = 'QUEUED'`` the
planner then scanned every QUEUED row through ``ix_jobs_active`` (or every dispatchable one
through the dispatch indexes) for a claim of one job; each test below first shows that plan
on the plain form, then that Stratus's statement reads the job through ``pk_jobs`` alone."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scheduler.service import _SEND
from shared.db.raw import raw_connection
from shared.events import utcnow
from shared.jobs.store import CLAIM_QUEUED, FINISH_ATTEMPTS
from shared.settings import CommonSettings
from tests.factories import copy_jobs, own_database, template_job

BACKLOG = 3000


@pytest.fixture(scope="module")
async def backlog(settings: CommonSettings) -> AsyncIterator[tuple[AsyncEngine, list[Any]]]:
    """A database whose statistics were taken with no job waiting and none running, then a
    backlog of ``BACKLOG`` QUEUED jobs and as many RUNNING ones (not analyzed): the ids of
    one QUEUED and one RUNNING job."""
    async with own_database(settings, "plans") as (_, sessions):
        await template_job(sessions, "plans")
        engine = sessions.kw["bind"]
        await copy_jobs(sessions, "SUCCEEDED", 1, 200)
        async with raw_connection(engine) as conn:
            await conn.execute("ANALYZE jobs")  # nothing waits: QUEUED looks empty from here
        await copy_jobs(sessions, "QUEUED", 0, BACKLOG)
        await copy_jobs(sessions, "RUNNING", 1, BACKLOG)
        async with raw_connection(engine) as conn:
            queued = await conn.fetchval("SELECT id FROM jobs WHERE state = 'QUEUED' LIMIT 1")
            running = await conn.fetchval("SELECT id FROM jobs WHERE state = 'RUNNING' LIMIT 1")
        yield engine, [queued, running]


async def _indexes(engine: AsyncEngine, statement: str, *args: Any) -> set[str]:
    """The indexes the plan of ``statement`` reads ``jobs`` through (EXPLAIN, not run)."""
    async with raw_connection(engine) as conn:
        raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + statement, *args)
    plan = json.loads(raw) if isinstance(raw, str) else raw  # the pool's codec may decode it
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if node.get("Relation Name") == "jobs" and "Index Name" in node:
            found.add(node["Index Name"])
        if node.get("Relation Name") == "jobs" and node.get("Node Type") == "Seq Scan":
            found.add("(seq scan)")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


def _plain(statement: str) -> str:
    """The statement as it was, with a plain condition on the state."""
    return statement.replace("state || '' =", "state =")


async def test_the_claim_reads_the_job_by_its_id(backlog: tuple[AsyncEngine, list[Any]]) -> None:
    engine, (queued, _) = backlog
    now = utcnow()
    args = ([queued], "w-plans", now, now)
    assert "ix_jobs_active" in await _indexes(engine, _plain(CLAIM_QUEUED), *args)
    assert await _indexes(engine, CLAIM_QUEUED, *args) == {"pk_jobs"}


async def test_the_record_reads_the_job_by_its_id(backlog: tuple[AsyncEngine, list[Any]]) -> None:
    engine, (_, running) = backlog
    args = ([running], [1], ["SUCCEEDED"], ["{}"], [None], [0.1], [0.1], utcnow(), "w-plans")
    assert "ix_jobs_active" in await _indexes(engine, _plain(FINISH_ATTEMPTS), *args)
    assert await _indexes(engine, FINISH_ATTEMPTS, *args) == {"pk_jobs"}


async def test_the_dispatch_reads_the_jobs_by_their_ids(
    backlog: tuple[AsyncEngine, list[Any]],
) -> None:
    engine, (queued, _) = backlog
    args = ([queued], "cpu", "dispatched to the cpu queue")
    assert await _indexes(engine, _plain(_SEND), *args) != {"pk_jobs"}
    assert await _indexes(engine, _SEND, *args) == {"pk_jobs"}
