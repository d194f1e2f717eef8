"""Recording an attempt (``services.worker.service.record``) on a database of its own: the
usage row holds the attempt's CPU seconds, also for an attempt stopped by the user's cancel,
and a superseded attempt records nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler import service as scheduler
from services.worker import service
from services.worker.service import Claim, Report
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.models import Job, JobAttempt, Tenant
from shared.jobs.states import JobState
from shared.jobs.store import set_job_state
from shared.settings import CommonSettings
from tools.cluster import drop_database, prepare_database

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture(scope="module")
async def db(settings: CommonSettings) -> AsyncIterator[Sessions]:
    name = f"{settings.postgres.database}_worker"
    prepare_database(name)
    engine = make_engine(settings.postgres.model_copy(update={"database": name}))
    yield make_sessionmaker(engine)
    await engine.dispose()
    drop_database(name)


async def running_job(db: Sessions) -> Claim:
    tid, jid = uuid.uuid4(), uuid.uuid4()
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"w{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
        await session.flush()
        session.add(
            Job(
                id=jid,
                tenant_id=tid,
                kernel="montecarlo_pi",
                device="cpu",
                params={"samples": 1},
                inputs={},
                outputs={},
                labels={},
                priority=0,
                timeout_s=60,
                max_retries=2,
                state="PENDING",
                attempts=0,
            )
        )
    async with db() as session, session.begin():
        assert await scheduler.admit(session=session, job_ids=[jid]) == 1
        claim = await service.claim(session=session, job_id=jid, worker="w1", lease_s=30)
    assert claim is not None
    return claim


async def record(db: Sessions, claim: Claim, report: Report) -> tuple[bool, list[JobAttempt]]:
    async with db() as session, session.begin():
        accepted = await service.record(session=session, claim=claim, worker="w1", report=report)
    async with db() as session:
        rows = await session.scalars(select(JobAttempt).where(JobAttempt.job_id == claim.job_id))
        return accepted, list(rows)


async def test_a_finished_attempt_records_its_cpu_seconds(db: Sessions) -> None:
    claim = await running_job(db)
    report = Report(JobState.SUCCEEDED, result={"x": 1}, cpu_seconds=2.5, wall_seconds=1.5)
    accepted, rows = await record(db, claim, report)
    assert accepted
    assert [(r.attempt, r.outcome, r.cpu_seconds) for r in rows] == [(1, "SUCCEEDED", 2.5)]


async def test_an_attempt_the_user_cancelled_still_records_its_usage(db: Sessions) -> None:
    claim = await running_job(db)
    async with db() as session, session.begin():  # the gateway's cancel
        assert (await set_job_state(session, claim.job_id, JobState.CANCELLED)).accepted
    report = Report(JobState.CANCELLED, error="cancelled while running", cpu_seconds=3.25)
    accepted, rows = await record(db, claim, report)
    assert not accepted  # the job was already CANCELLED
    assert [(r.outcome, r.cpu_seconds) for r in rows] == [("CANCELLED", 3.25)]
    _, again = await record(db, claim, report)  # a duplicate counts once
    assert len(again) == 1


async def test_a_superseded_attempt_records_nothing(db: Sessions) -> None:
    stale = await running_job(db)
    async with db() as session, session.begin():  # reaped, run again elsewhere, cancelled
        await set_job_state(session, stale.job_id, JobState.QUEUED)
        second = await service.claim(session=session, job_id=stale.job_id, worker="w2", lease_s=30)
        assert second is not None
        assert second.attempt == stale.attempt + 1
        await set_job_state(session, stale.job_id, JobState.CANCELLED)
    accepted, rows = await record(db, stale, Report(JobState.CANCELLED, cpu_seconds=1.0))
    assert not accepted
    assert rows == []
