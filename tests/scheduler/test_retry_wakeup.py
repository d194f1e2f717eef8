"""A retried job comes back through a delay queue: the failed attempt sets ``run_after`` and
stages a ``job.retry`` wake-up that RabbitMQ holds for the backoff, then routes to the
scheduler, which dispatches the job. The scheduler's own poll is slowed to a minute here, so
only the wake-up can explain a prompt re-dispatch."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

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
from shared.settings import CommonSettings
from tests.factories import new_job, own_database


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
            "dispatch_interval_s": 60.0,
            "reaper_enabled": False,
            "worker_ttl_s": 600.0,
        }
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        deadline = time.monotonic() + 15  # the first pass admits and dispatches it
        while (await _dispatched(db, job.id)).dispatched_at is None:
            assert time.monotonic() < deadline
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
        failed_at = time.monotonic()
        retried = await _dispatched(db, job.id)
        assert (retried.state, retried.dispatched_at) == ("QUEUED", None)
        assert retried.run_after is not None
        backoff_s = (retried.run_after - utcnow()).total_seconds()
        assert 0.5 < backoff_s <= 1.25  # attempt 1: 1 s ± 20 %

        app.state.resources.relay.wake()  # as a worker's relay would after its commit
        deadline = time.monotonic() + 10
        while (job_now := await _dispatched(db, job.id)).dispatched_at is None:
            assert time.monotonic() < deadline, "the wake-up never came"
            await asyncio.sleep(0.05)
        waited = time.monotonic() - failed_at
        assert job_now.dispatched_at >= retried.run_after  # never before its backoff ended
        assert waited < backoff_s + 5  # long before the 60 s poll
        async with db() as session:
            left = (await session.execute(select(Outbox.routing_key))).scalars().all()
        assert "job.retry" not in left  # published (through the delay queue)
