"""``GET /v1/jobs/{id}/attempts``: one item per attempt, the running one with outcome null,
each written by the path that ended it (the worker's general record for a retry, its
set-based statement for a final outcome, the reaper for a lost worker): worker, device,
start and end, use, outcome and error. Another tenant's job, an unknown id: 404."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler import service as scheduler
from services.worker import service as worker
from shared.db.models import Job
from shared.events import utcnow
from shared.jobs.proposals import Report
from shared.jobs.states import JobState
from shared.jobs.store import Claim, Finish, claim_queued, finish_attempts, session_fetch
from tests.factories import new_job
from tests.gateway.array_rows import stored_array
from tests.gateway.conftest import TenantKey, make_tenant
from tests.gateway.test_jobs_api import assert_problem

Sessions = async_sessionmaker[AsyncSession]


async def queued(sessions: Sessions, tenant: TenantKey, **fields: object) -> uuid.UUID:
    """A QUEUED job of ``tenant``, dispatched to the CPU pool."""
    jid = uuid.uuid4()
    async with sessions() as s, s.begin():
        s.add(
            new_job(
                uuid.UUID(tenant.tenant_id),
                id=jid,
                state="QUEUED",
                assigned_device="cpu",
                dispatched_at=utcnow(),
                **fields,
            )
        )
    return jid


async def claimed(sessions: Sessions, job_id: uuid.UUID, worker_name: str = "w1") -> Claim:
    """QUEUED -> RUNNING, as a worker's claim does (dispatched to the CPU again first)."""
    async with sessions() as s, s.begin():
        await s.execute(update(Job).where(Job.id == job_id).values(assigned_device="cpu"))
        claims = await claim_queued(session_fetch(s), [job_id], worker=worker_name, lease_s=30)
    return claims[job_id]


async def recorded(
    sessions: Sessions, claim: Claim, report: Report, worker_name: str = "w1"
) -> None:
    """The worker's record: a final outcome without rules in its set-based statement, what
    that leaves (a retryable failure) on the general path, as ``WorkerRuntime`` does."""
    async with sessions() as s, s.begin():
        left = await finish_attempts(
            session_fetch(s),
            [Finish(claim.job_id, claim.tenant_id, claim.attempt, report)],
            worker=worker_name,
        )
        if left:
            await worker.record(
                session=s, claim=claim, worker=worker_name, report=report, device="cpu"
            )


async def attempts(
    client: httpx.AsyncClient, tenant: TenantKey, job_id: str
) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/jobs/{job_id}/attempts", headers=tenant.headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def when(text: str | None) -> datetime:
    assert text is not None
    return datetime.fromisoformat(text)


async def test_a_retried_job_has_two_attempts_with_their_outcomes(
    client: httpx.AsyncClient, sessions: Sessions, tenant: TenantKey
) -> None:
    jid = await queued(sessions, tenant)
    assert await attempts(client, tenant, str(jid)) == []  # not run yet

    first = await claimed(sessions, jid, "w1")
    [running] = await attempts(client, tenant, str(jid))
    assert running["attempt"] == 1
    assert (running["worker"], running["device"], running["outcome"]) == ("w1", "cpu", None)
    assert running["started_at"] is not None
    assert running["finished_at"] is None

    failed = Report(
        JobState.FAILED, error="OSError: disk full", retryable=True, cpu_seconds=1.5, wall_seconds=2
    )
    await recorded(sessions, first, failed, "w1")  # retried: back to QUEUED
    second = await claimed(sessions, jid, "w2")
    done = Report(JobState.SUCCEEDED, result={"n": 1}, cpu_seconds=0.25, wall_seconds=0.5)
    await recorded(sessions, second, done, "w2")

    one, two = await attempts(client, tenant, str(jid))
    assert (one["attempt"], one["outcome"], one["worker"]) == (1, "FAILED", "w1")
    assert one["error"] == "OSError: disk full"
    assert (one["cpu_seconds"], one["device"]) == (1.5, "cpu")
    assert (two["attempt"], two["outcome"], two["worker"]) == (2, "SUCCEEDED", "w2")
    assert (two["error"], two["cpu_seconds"], two["device"]) == (None, 0.25, "cpu")
    assert two["gpu_seconds"] == 0.0
    for a in (one, two):
        assert when(a["started_at"]) <= when(a["finished_at"])
    assert when(one["finished_at"]) <= when(two["started_at"])

    job = (await client.get(f"/v1/jobs/{jid}", headers=tenant.headers)).json()
    assert (job["state"], job["progress"], job["assigned_device"]) == ("SUCCEEDED", 1.0, "cpu")


async def test_an_attempt_whose_worker_was_lost_is_reaped_with_its_device_and_start(
    client: httpx.AsyncClient, sessions: Sessions, tenant: TenantKey
) -> None:
    jid = await queued(sessions, tenant)
    await claimed(sessions, jid)
    async with sessions() as s, s.begin():  # the lease ran out
        await s.execute(
            update(Job)
            .where(Job.id == jid)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    async with sessions() as s, s.begin():
        lost = await scheduler.requeue_lost(session=s, now=utcnow())
    assert jid in {a.job_id for a in lost}
    [one] = await attempts(client, tenant, str(jid))
    assert (one["outcome"], one["device"], one["worker"]) == ("LOST", "cpu", "w1")
    assert one["error"] == "worker lost while running the job"
    assert one["started_at"] is not None


async def test_another_tenants_job_and_unknown_ids_are_404(
    client: httpx.AsyncClient, sessions: Sessions, tenant: TenantKey
) -> None:
    jid = await queued(sessions, tenant)
    other = await make_tenant(client)
    for path in (f"/v1/jobs/{jid}/attempts", f"/v1/jobs/{uuid.uuid4()}/attempts"):
        assert_problem(await client.get(path, headers=other.headers), 404)
    assert_problem(await client.get("/v1/jobs/nope/attempts", headers=tenant.headers), 404)


async def test_an_elements_attempts_by_its_id(
    client: httpx.AsyncClient, sessions: Sessions, tenant: TenantKey
) -> None:
    array_id = await stored_array(sessions, tenant, 3, materialised=1)
    element = await claimed(sessions, (await element_ids(sessions, array_id))[0])
    [running] = await attempts(client, tenant, f"{array_id}:0")
    assert (running["attempt"], running["outcome"]) == (element.attempt, None)
    assert await attempts(client, tenant, f"{array_id}:2") == []  # no row yet: no attempt
    assert await attempts(client, tenant, str(array_id)) == []  # the array itself runs nothing
    other = await make_tenant(client)
    r = await client.get(f"/v1/jobs/{array_id}:0/attempts", headers=other.headers)
    assert_problem(r, 404)
    r = await client.get(f"/v1/jobs/{array_id}:3/attempts", headers=tenant.headers)
    assert_problem(r, 404)


async def element_ids(sessions: Sessions, array_id: uuid.UUID) -> list[uuid.UUID]:
    async with sessions() as s:
        rows = await s.execute(
            select(Job.id).where(Job.array_id == array_id).order_by(Job.array_index)
        )
        return list(rows.scalars())
