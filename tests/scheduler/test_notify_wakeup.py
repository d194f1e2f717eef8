"""Submissions and finished attempts wake the scheduler by PostgreSQL NOTIFY
(``shared.db.wakeup``): its dispatch poll is slowed to a minute, so only the NOTIFY can
explain a prompt dispatch. Its listening connection reconnects when it is cut; and while no
one listens, the poll alone still dispatches what was submitted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import services.scheduler.app as scheduler_app
from services.gateway.jobs import service as gateway_service
from services.gateway.jobs import writer
from services.gateway.jobs.schemas import JobSubmit
from services.scheduler.settings import SchedulerSettings
from shared.db.models import Job, Tenant, Worker
from shared.db.wakeup import Connect, WakeListener
from shared.events import utcnow
from shared.jobs.proposals import Report
from shared.jobs.states import JobState
from shared.jobs.store import Finish, claim_queued, finish_attempts
from shared.settings import CommonSettings
from tests.factories import own_database

Sessions = async_sessionmaker[AsyncSession]
POLL_S = 60.0


@pytest.fixture(scope="module")
async def own(settings: CommonSettings) -> AsyncIterator[tuple[str, Sessions]]:
    async with own_database(settings, "notify", vhost=True) as own:
        yield own


@pytest.fixture
async def tenant(own: tuple[str, Sessions]) -> uuid.UUID:
    """A tenant alone with one live worker slot."""
    _, db = own
    tid = uuid.uuid4()
    async with db() as session, session.begin():
        await session.execute(text("TRUNCATE tenants, workers, outbox CASCADE"))
        session.add(Tenant(id=tid, name=f"t{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
        session.add(Worker(id="w-notify", device="cpu", concurrency=1, heartbeat_at=utcnow()))
    return tid


def scheduler_settings(name: str, poll_s: float) -> SchedulerSettings:
    base = SchedulerSettings()
    return base.model_copy(
        update={
            "postgres": base.postgres.model_copy(update={"database": name}),
            "rabbit": base.rabbit.model_copy(update={"vhost": name}),
            "dispatch_interval_s": poll_s,
            "dispatch_slack": 0.0,
            "reaper_enabled": False,
            "worker_ttl_s": 600.0,
        }
    )


async def submit(dsn: str, tenant_id: uuid.UUID) -> uuid.UUID:
    """A job as the gateway writes it (QUEUED, no inputs), by its own statement."""
    data = JobSubmit(kernel="montecarlo_pi", device="cpu", params={"samples": 1})
    job = gateway_service._new_job(
        tenant_id=tenant_id, data=data, max_queued=0, kernel="montecarlo_pi",
        params={"samples": 1}, timeout_s=60, max_retries=0, idempotency_key=None,
        request_hash=None,
    )  # fmt: skip
    job.max_queued = None
    conn = await asyncpg.connect(dsn)
    try:
        await conn.fetch(writer.INSERT_JOBS, *writer.arguments(writer.WRITTEN, [job]))
    finally:
        await conn.close()
    return job.id


async def dispatched(db: Sessions, job_id: uuid.UUID, before: datetime) -> Job:
    """The job once dispatched; fails if that takes until ``before`` (the next poll)."""
    while True:
        async with db() as session:
            job = await session.get(Job, job_id)
        assert job is not None
        if job.dispatched_at is not None:
            return job
        assert utcnow() < before, "not dispatched before the poll's next pass"
        await asyncio.sleep(0.05)


def dsn_of(name: str) -> str:
    return (
        SchedulerSettings().postgres.model_copy(update={"database": name}).url(driver="postgresql")
    )


def listener_of(app: FastAPI) -> WakeListener:
    listener: WakeListener = app.state.wake_listener
    return listener


async def test_a_submission_and_a_finished_attempt_wake_the_dispatch_at_once(
    own: tuple[str, Sessions], tenant: uuid.UUID
) -> None:
    name, db = own
    dsn = dsn_of(name)
    app = scheduler_app.create_app(scheduler_settings(name, POLL_S))
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(listener_of(app).connected.wait(), 30)
        next_poll = utcnow() + timedelta(seconds=POLL_S)
        first = await submit(dsn, tenant)
        await dispatched(db, first, next_poll)
        # the one slot is taken: the second job waits until the first attempt ends
        second = await submit(dsn, tenant)
        conn = await asyncpg.connect(dsn)
        try:
            claims = await claim_queued(conn.fetch, [first], worker="w-notify", lease_s=30)
            claim = claims[first]
            async with db() as session:
                job = await session.get(Job, second)
            assert job is not None
            assert job.dispatched_at is None  # no slot for it yet
            report = Report(JobState.SUCCEEDED, result={"ok": 1})
            finish = Finish(first, tenant, claim.attempt, report)
            assert await finish_attempts(conn.fetch, [finish], worker="w-notify") == []
        finally:
            await conn.close()
        await dispatched(db, second, next_poll)


async def test_the_listener_reconnects_when_its_connection_is_cut(
    own: tuple[str, Sessions], tenant: uuid.UUID
) -> None:
    name, db = own
    dsn = dsn_of(name)
    app = scheduler_app.create_app(scheduler_settings(name, POLL_S))
    async with app.router.lifespan_context(app):
        listener = listener_of(app)
        await asyncio.wait_for(listener.connected.wait(), 30)
        cut = listener.backend_pid
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", cut)
        finally:
            await conn.close()
        async with asyncio.timeout(30):
            while listener.backend_pid in (None, cut):
                await asyncio.sleep(0.05)
        next_poll = utcnow() + timedelta(seconds=POLL_S)
        job = await submit(dsn, tenant)
        await dispatched(db, job, next_poll)


async def test_a_job_submitted_while_no_one_listens_is_dispatched_by_the_poll(
    own: tuple[str, Sessions], tenant: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener cannot connect at all: its NOTIFY reaches no one, the poll (short
    here) is the safety net."""
    name, db = own
    attempts: list[int] = []

    def unreachable(*_a: Any, **_k: Any) -> Connect:
        async def connect() -> Any:
            attempts.append(1)
            raise ConnectionRefusedError("no listening for this test")

        return connect

    monkeypatch.setattr(scheduler_app, "listener_connect", unreachable)
    app = scheduler_app.create_app(scheduler_settings(name, 1.0))
    async with app.router.lifespan_context(app):
        async with asyncio.timeout(30):
            while not attempts:  # the listener tried, and failed
                await asyncio.sleep(0.05)
        assert not listener_of(app).connected.is_set()
        job = await submit(dsn_of(name), tenant)
        await dispatched(db, job, utcnow() + timedelta(seconds=30))
