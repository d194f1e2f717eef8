"""A job handed back from its checkpoint (a drain, a preemption) goes back to QUEUED at once,
says why, counts the move in ``preemptions`` and uses up no retry; a plain hand-back and a
lost worker still do. On a database of its own, through ``set_job_state``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Job, Tenant
from shared.events import utcnow
from shared.jobs.proposals import Claimed, Lost, Report, Reported
from shared.jobs.states import JobState
from shared.jobs.store import set_job_state
from shared.settings import CommonSettings
from tests.factories import new_job, own_database

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture(scope="module")
async def db(settings: CommonSettings) -> AsyncIterator[Sessions]:
    async with own_database(settings, "ckstates") as (_, sessions):
        yield sessions


async def running_job(db: Sessions, max_retries: int) -> uuid.UUID:
    tid, now, job_id = uuid.uuid4(), utcnow(), uuid.uuid4()
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"c{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
        await session.flush()
        session.add(
            new_job(
                tid,
                id=job_id,
                kernel="stencil2d",
                state="RUNNING",
                attempts=1,
                max_retries=max_retries,
                worker="w0",
                started_at=now,
                lease_expires_at=now + timedelta(seconds=30),
            )
        )
    return job_id


async def propose(db: Sessions, job_id: uuid.UUID, proposal: object) -> Job:
    async with db() as session, session.begin():
        t = await set_job_state(session, job_id, proposal)  # type: ignore[arg-type]
        return t.job


def drained(attempt: int) -> Reported:
    return Reported(attempt, "w0", Report(JobState.QUEUED, handed_back="drained"))


async def test_a_drained_job_is_queued_at_once_and_uses_no_retry(db: Sessions) -> None:
    job_id = await running_job(db, max_retries=0)  # no retry at all
    job = await propose(db, job_id, drained(1))
    assert job.state == "QUEUED"
    assert job.state_reason == "drained"
    assert job.preemptions == 1
    assert job.run_after is None  # no backoff
    assert job.error is None
    # moved twice more: still no retry used
    for attempt in (2, 3):
        await propose(db, job_id, Claimed("w1", 30.0))
        job = await propose(db, job_id, drained(attempt))
        assert job.state == "QUEUED"
    assert job.preemptions == 3
    assert job.attempts == 3
    # then the worker is lost: its one real attempt was the last it had
    await propose(db, job_id, Claimed("w1", 30.0))
    job = await propose(db, job_id, Lost(4))
    assert job.state == "FAILED"


async def test_after_moves_a_lost_worker_still_gets_its_retries(db: Sessions) -> None:
    job_id = await running_job(db, max_retries=1)
    await propose(db, job_id, drained(1))
    await propose(db, job_id, Claimed("w1", 30.0))
    await propose(db, job_id, drained(2))
    await propose(db, job_id, Claimed("w1", 30.0))
    job = await propose(db, job_id, Lost(3))  # the first real attempt lost: a retry
    assert job.state == "QUEUED"
    await propose(db, job_id, Claimed("w1", 30.0))
    job = await propose(db, job_id, Lost(4))  # the second: none left
    assert job.state == "FAILED"


async def test_a_plain_hand_back_still_uses_a_retry(db: Sessions) -> None:
    job_id = await running_job(db, max_retries=0)
    report = Report(JobState.QUEUED, error="worker shut down during the attempt")
    job = await propose(db, job_id, Reported(1, "w0", report))
    assert job.state == "FAILED"
    assert job.preemptions == 0
