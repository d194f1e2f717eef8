"""A job is RUNNING only while an attempt of a live worker holds it.

The heartbeat extends the leases of the jobs the process holds (claimed, not yet recorded)
and of no other job RUNNING under its name: one that no attempt holds (its claim committed
under a consumer cancelled by a broker restart, a record that gave up) loses its lease, and
the reaper returns it. And a claim that committed goes on to start its run whatever happens
to the handler that asked for it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.scheduler import service as scheduler
from services.worker import service
from services.worker.app import WorkerRuntime
from services.worker.runner import KernelRunner, Outcome, Request, Status, Usage
from services.worker.settings import WorkerSettings
from shared.db.models import Job, Tenant
from shared.events import JobDispatched
from shared.messaging import Delivery
from shared.runtime import Resources
from shared.settings import CommonSettings, StorageSettings
from tests.factories import admit_jobs, new_job, own_database

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture(scope="module")
async def db(settings: CommonSettings) -> AsyncIterator[Sessions]:
    async with own_database(settings, "leases") as (_, sessions):
        yield sessions


async def queued_job(db: Sessions) -> uuid.UUID:
    tid, jid = uuid.uuid4(), uuid.uuid4()
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"l{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
        await session.flush()
        session.add(new_job(tid, id=jid))
    async with db() as session, session.begin():
        assert await admit_jobs(session=session, job_ids=[jid]) == 1
    return jid


async def job(db: Sessions, job_id: uuid.UUID) -> Job:
    async with db() as session:
        found = await session.get(Job, job_id)
        assert found is not None
        return found


class InstantRunner:
    """A kernel runner whose every attempt succeeds at once (or once ``go`` is set)."""

    def __init__(self, go: asyncio.Event | None = None) -> None:
        self.go = go

    async def run(
        self, request: Request, *, timeout_s: float, usage: Usage, **_: object
    ) -> Outcome:
        if self.go is not None:
            await self.go.wait()
        return Outcome(Status.SUCCEEDED, usage, result={"kernel": request.kernel})


def runtime(db: Sessions, tmp_path: Path, runner: InstantRunner, lease_s: float) -> WorkerRuntime:
    storage = StorageSettings.model_validate({"local": {"root": str(tmp_path / "local")}})
    settings = WorkerSettings(
        name=f"w-{uuid.uuid4().hex[:8]}", storage=storage, concurrency=2, lease_s=lease_s
    )
    res = SimpleNamespace(
        engine=db.kw["bind"], sessions=db, relay=SimpleNamespace(wake=lambda: None)
    )
    return WorkerRuntime(cast(Resources, res), settings, cast(KernelRunner, runner))


def dispatched(job_id: uuid.UUID) -> Delivery:
    event = JobDispatched(tenant_id=uuid.uuid4(), job_id=job_id, device="cpu", kernel="x")
    return Delivery(event.to_bytes(), None, "job.dispatch.cpu", False, 0)


# The orphan's lease is far shorter than the worker's, so that a time between the two ends
# exists whatever the offset between this process' clock and the database's.
ORPHAN_LEASE_S = 1.0


async def test_the_heartbeat_keeps_only_the_jobs_the_worker_holds(
    db: Sessions, tmp_path: Path
) -> None:
    go = asyncio.Event()
    rt = runtime(db, tmp_path, InstantRunner(go), lease_s=30)
    held, orphan = await queued_job(db), await queued_job(db)
    await rt.on_dispatch(dispatched(held))  # claimed, and its attempt runs (until ``go``)
    async with db() as session, session.begin():  # RUNNING under its name, run by nothing
        assert await service.claim(
            session=session, job_id=orphan, worker=rt.settings.name, lease_s=ORPHAN_LEASE_S
        )
    claimed = {j: (await job(db, j)).lease_expires_at for j in (held, orphan)}
    await rt.heartbeat()
    beaten = {j: (await job(db, j)).lease_expires_at for j in (held, orphan)}
    assert beaten[orphan] == claimed[orphan]  # not extended
    assert beaten[held] != claimed[held]  # extended, to the heartbeat's time + the lease
    lapsed, kept = beaten[orphan], beaten[held]
    assert lapsed is not None
    assert kept is not None
    async with db() as session, session.begin():  # the reaper, once the orphan's lease ran out
        reaped = await scheduler.requeue_lost(session=session, now=lapsed + (kept - lapsed) / 2)
    try:
        # the job no attempt holds loses its lease and goes back to the queue ...
        assert [a.job_id for a in reaped] == [orphan]
        assert (await job(db, orphan)).state == "QUEUED"
        # ... the one the worker runs keeps it
        assert (await job(db, held)).state == "RUNNING"
    finally:
        go.set()
        await asyncio.wait(rt.jobs, timeout=10)
    assert (await job(db, held)).state == "SUCCEEDED"


async def test_a_claim_committed_as_its_handler_is_cancelled_still_runs(
    db: Sessions, tmp_path: Path
) -> None:
    """The claim's statement waits on the job's row (locked here), the handler is cancelled
    (what aiormq does when the broker closes the delivery's channel), then the lock goes and
    the claim commits: its attempt must run all the same."""
    jid = await queued_job(db)
    rt = runtime(db, tmp_path, InstantRunner(), lease_s=30)
    async with db() as session, session.begin():
        await session.execute(select(Job.id).where(Job.id == jid).with_for_update())
        handler = asyncio.create_task(rt.on_dispatch(dispatched(jid)))
        await waiting_on_a_lock(db)
        handler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handler
    deadline = asyncio.get_running_loop().time() + 10
    while (await job(db, jid)).state != "SUCCEEDED" or rt.jobs:
        assert asyncio.get_running_loop().time() < deadline, (
            "the claim committed but no attempt runs the job: it stays RUNNING as long as "
            "the worker lives"
        )
        await asyncio.sleep(0.05)
    assert not rt.leased  # recorded: no lease left to extend
    assert not rt.slots.locked()  # and the slot is free again


async def waiting_on_a_lock(db: Sessions) -> None:
    """Until a statement of this test's database waits for a row lock."""
    engine = cast(AsyncEngine, db.kw["bind"])
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        async with engine.connect() as conn:
            if await conn.scalar(waiting):
                return
        assert asyncio.get_running_loop().time() < deadline, "the claim never reached the row"
        await asyncio.sleep(0.02)
