"""Stage-in wakes the scheduler: a job whose input is on ``s3`` waits while the datamover
brings it to ``local``, and the migration's ``migration.finished`` event (published with its
final state) has the scheduler dispatch the job at once. The scheduler's own poll is slowed to
two minutes here, so only the event can explain a prompt dispatch."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import numpy as np
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler.app import create_app
from services.scheduler.settings import SchedulerSettings
from shared.db.models import Job, Migration, Worker
from shared.events import utcnow
from shared.settings import StorageSettings
from tests.datamover.harness import CHUNK, MotoServer, new_tenant, put, running_datamover
from tests.factories import migrations_for_job
from tests.gateway.test_submit_validation import npy

POLL_S = 120.0


async def _job(sessions: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> Job:
    async with sessions() as session:
        job = await session.get(Job, job_id)
    assert job is not None
    return job


async def _staged(sessions: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> list[Migration]:
    async with sessions() as session:
        return await migrations_for_job(session=session, job_id=job_id)


async def test_a_job_is_dispatched_as_soon_as_its_stage_in_finishes(
    api: httpx.AsyncClient,
    storage: StorageSettings,
    moto: MotoServer,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    t = await new_tenant(api)
    values = np.arange(2 * CHUNK // 8 + 1, dtype=np.float64)  # over two chunks
    assert (await put(api, t, "cold/x.npy", npy(values), tier="s3"))["tier"] == "s3"
    await put(api, t, "warm/y.npy", npy(values))
    worker = f"w-stage-{uuid.uuid4().hex[:8]}"
    async with sessions() as session, session.begin():  # room for every job in this database
        session.add(Worker(id=worker, device="cpu", concurrency=64, heartbeat_at=utcnow()))
    settings = SchedulerSettings(
        storage=storage, dispatch_interval_s=POLL_S, reaper_enabled=False, worker_ttl_s=600.0
    )
    scheduler = create_app(settings)
    # the poll's passes come at start (before the job exists) and every POLL_S after
    next_poll = utcnow() + timedelta(seconds=POLL_S)
    try:
        async with running_datamover(storage), scheduler.router.lifespan_context(scheduler):
            r = await api.post(
                "/v1/jobs",
                json={
                    "kernel": "saxpy",
                    "params": {"a": 2.0},
                    "inputs": {"x": "cold/x.npy", "y": "warm/y.npy"},
                    "outputs": {"y": "out/y.npy"},
                },
                headers=t.headers,
            )
            assert r.status_code == 201, r.text
            job_id = uuid.UUID(r.json()["id"])
            while (job := await _job(sessions, job_id)).dispatched_at is None:
                assert utcnow() < next_poll, ("not dispatched", job.state_reason)
                await asyncio.sleep(0.05)
        staged = await _staged(sessions, job_id)
    finally:
        async with sessions() as session, session.begin():
            await session.execute(delete(Worker).where(Worker.id == worker))
    assert [(m.dataset, m.from_tier, m.to_tier, m.state) for m in staged] == [
        ("cold/x.npy", "s3", "local", "SUCCEEDED")
    ]
    finished_at = staged[0].finished_at
    assert finished_at is not None
    assert job.dispatched_at is not None
    assert job.dispatched_at >= finished_at  # not before its input was on local
    assert job.dispatched_at < next_poll  # woken by migration.finished, not by the poll
    assert (job.state, job.state_reason) == ("QUEUED", "dispatched to the cpu queue")
    meta = (await api.get("/v1/datasets/cold/x.npy?meta=1", headers=t.headers)).json()
    assert meta["tiers"] == ["local", "s3"]
