"""A retried job comes back through a delay queue: the failed attempt sets ``run_after`` and
stages a ``job.retry`` wake-up that RabbitMQ holds for the backoff, then routes to the
scheduler, which dispatches the job. The scheduler's own poll is slowed to a minute here, so
only the wake-up can explain a prompt re-dispatch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler.app import create_app
from services.scheduler.settings import SchedulerSettings
from services.worker import service as worker_service
from shared.db.models import Job, Outbox, Tenant, Worker
from shared.events import utcnow
from shared.jobs.proposals import Report
from shared.jobs.states import JobState
from shared.jobs.store import DEFAULT_RETRY
from shared.settings import CommonSettings
from tests.factories import new_job, own_database

POLL_S = 60.0


@pytest.fixture(scope="module")
async def own(
    settings: CommonSettings,
) -> AsyncIterator[tuple[str, async_sessionmaker[AsyncSession]]]:
    async with own_database(settings, "wake", vhost=True) as own:
        yield own


async def _dispatched(db: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> Job:
    async with db() as session:
        job = await session.get(Job, job_id)
    assert job is not None
    return job


async def test_a_retry_is_dispatched_when_its_delayed_wakeup_arrives(
    own: tuple[str, async_sessionmaker[AsyncSession]], test_env: dict[str, str]
) -> None:
    name, db = own
    tid = uuid.uuid4()
    job = new_job(tid, max_retries=2)
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"t{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
        session.add(Worker(id="w-wake", device="cpu", concurrency=2, heartbeat_at=utcnow()))
        await session.flush()
        session.add(job)
    base = SchedulerSettings()
    settings = base.model_copy(
        update={
            "postgres": base.postgres.model_copy(update={"database": name}),
            "rabbit": base.rabbit.model_copy(update={"vhost": name}),
            "dispatch_interval_s": POLL_S,
            "reaper_enabled": False,
            "worker_ttl_s": 600.0,
        }
    )
    app = create_app(settings)
    started = utcnow()  # the poll's passes come at start and every POLL_S after
    async with app.router.lifespan_context(app):
        next_poll = started + timedelta(seconds=POLL_S)
        while (await _dispatched(db, job.id)).dispatched_at is None:
            assert utcnow() < next_poll, "the first pass did not dispatch it"
            await asyncio.sleep(0.1)

        async with db() as session, session.begin():
            claim = await worker_service.claim(
                session=session, job_id=job.id, worker="w-wake", lease_s=30
            )
            assert claim is not None
            assert await worker_service.record(
                session=session,
                claim=claim,
                worker="w-wake",
                report=Report(JobState.FAILED, error="transient", retryable=True),
            )
        retried = await _dispatched(db, job.id)
        assert (retried.state, retried.dispatched_at) == ("QUEUED", None)
        assert retried.run_after is not None
        # the failure's own timestamp: the backoff is the policy's, whatever the test's pace
        backoff_s = (retried.run_after - retried.updated_at).total_seconds()
        shortest, longest = DEFAULT_RETRY.delay(1, rand=0.0), DEFAULT_RETRY.delay(1, rand=1.0)
        assert shortest - 1e-6 <= backoff_s <= longest + 1e-6

        app.state.resources.relay.wake()  # as a worker's relay would after its commit
        while (job_now := await _dispatched(db, job.id)).dispatched_at is None:
            assert utcnow() < next_poll, "the wake-up never came"
            await asyncio.sleep(0.05)
        assert job_now.dispatched_at >= retried.run_after  # never before its backoff ended
        assert job_now.dispatched_at < next_poll  # the wake-up, not the poll, dispatched it
        async with db() as session:
            left = (await session.execute(select(Outbox.routing_key))).scalars().all()
        assert "job.retry" not in left  # published (through the delay queue)
