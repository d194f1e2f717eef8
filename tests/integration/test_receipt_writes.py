"""A job recorded by the worker's set-based statement (``finish_attempts``) gets its receipt,
CPU seconds included, in the one command that records it: the usage row written beside it does
not make the receipt's trigger write the job's row a second time (a later command would give
the row's new version a later ``cmin``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Job, Tenant
from shared.jobs.proposals import Report
from shared.jobs.states import JobState
from shared.jobs.store import Finish, claim_queued, finish_attempts, session_fetch
from shared.settings import CommonSettings
from tests.factories import admit_jobs, new_job, own_database

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture(scope="module")
async def db(settings: CommonSettings) -> AsyncIterator[Sessions]:
    async with own_database(settings, "receipt_writes") as (_, sessions):
        yield sessions


async def test_a_finished_jobs_receipt_comes_with_its_record(db: Sessions) -> None:
    tid, jid = uuid.uuid4(), uuid.uuid4()
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"r{tid.hex[:8]}", weight=1, quotas={}))
        await session.flush()
        session.add(new_job(tid, id=jid))
    async with db() as session, session.begin():
        assert await admit_jobs(session=session, job_ids=[jid]) == 1
    async with db() as session, session.begin():
        claims = await claim_queued(session_fetch(session), [jid], worker="w1", lease_s=30)
    report = Report(JobState.SUCCEEDED, result={"pi": 3.1}, cpu_seconds=0.25, wall_seconds=0.3)
    async with db() as session, session.begin():
        left = await finish_attempts(
            session_fetch(session), [Finish(jid, tid, claims[jid].attempt, report)], worker="w1"
        )
        assert left == []
        job_cmin, usage_cmin = (
            await session.execute(
                text(
                    "SELECT j.cmin::text, a.cmin::text FROM jobs j"
                    " JOIN job_attempts a ON a.job_id = j.id WHERE j.id = :id"
                ),
                {"id": jid},
            )
        ).one()
    assert job_cmin == usage_cmin
    async with db() as session:
        job = await session.get_one(Job, jid)
    assert job.state == "SUCCEEDED"
    assert job.receipt is not None
    assert job.receipt["cpu_seconds"] == 0.25
    assert (job.receipt["kernel"], job.receipt["worker"]) == ("montecarlo_pi", "w1")
