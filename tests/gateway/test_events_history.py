"""``GET /v1/jobs/{id}/events``: a job's transitions as ``job_events`` records them, an
array's own (written by ``stratus_array_refresh``), an element recorded by its chunk (no
``job_events`` rows: its row's times), and 404 across tenants. Also what migration 0018
writes: the tenant of a row whose inserter does not name it."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import JobEvent
from shared.events import utcnow
from shared.jobs.arrays import element_id, public_id
from shared.jobs.proposals import Cancelled
from shared.jobs.states import JobState
from shared.jobs.store import claim_queued, session_fetch, set_job_state
from tests.factories import new_array, new_job
from tests.gateway.conftest import TenantKey, make_tenant


async def test_a_jobs_transitions_oldest_first(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    job = new_job(uuid.UUID(tenant.tenant_id), state="QUEUED", queued_at=utcnow())
    async with sessions() as s, s.begin():
        s.add(job)
    async with sessions() as s, s.begin():  # the worker's statement, then the general path
        assert job.id in await claim_queued(session_fetch(s), [job.id], worker="w-1", lease_s=60)
    async with sessions() as s, s.begin():
        await set_job_state(s, job.id, Cancelled())
    r = await client.get(f"/v1/jobs/{job.id}/events", headers=tenant.headers)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [(i["state"], i["attempt"], i["worker"]) for i in items] == [
        ("QUEUED", 0, None),
        ("RUNNING", 1, "w-1"),
        ("CANCELLED", 1, None),
    ]
    assert items[0]["at"] <= items[1]["at"] <= items[2]["at"]
    async with sessions() as s:
        tenants = await s.execute(select(JobEvent.tenant_id).where(JobEvent.job_id == job.id))
        assert set(tenants.scalars()) == {job.tenant_id}


async def test_a_job_stored_queued_starts_with_its_queued(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    r = await client.post(
        "/v1/jobs",
        json={"kernel": "montecarlo_pi", "params": {"samples": 1000}},
        headers=tenant.headers,
    )
    assert r.status_code == 201, r.text
    job = r.json()
    got = await client.get(f"/v1/jobs/{job['id']}/events", headers=tenant.headers)
    assert got.status_code == 200, got.text
    assert [i["state"] for i in got.json()["items"]] == ["QUEUED"]


async def test_an_arrays_own_changes_and_an_element_recorded_by_its_chunk(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant_id = uuid.UUID(tenant.tenant_id)
    parent, array = new_array(tenant_id, 2)
    async with sessions() as s, s.begin():
        s.add(parent)
        await s.flush()
        s.add(array)
    t0 = utcnow()
    async with sessions() as s, s.begin():  # both elements inserted final, as a chunk does
        for index, state in ((0, "SUCCEEDED"), (1, "FAILED")):
            s.add(
                new_job(tenant_id, id=element_id(parent.id, index), array_id=parent.id,
                        array_index=index, state=state, attempts=1, worker="w-9",
                        queued_at=t0, started_at=t0 + timedelta(seconds=1),
                        finished_at=t0 + timedelta(seconds=2),
                        error="boom" if state == "FAILED" else None)
            )  # fmt: skip
    r = await client.get(f"/v1/jobs/{parent.id}/events", headers=tenant.headers)
    assert r.status_code == 200, r.text
    assert [(i["state"], i["attempt"]) for i in r.json()["items"]] == [("FAILED", 0)]
    e = await client.get(f"/v1/jobs/{public_id(parent.id, 1)}/events", headers=tenant.headers)
    assert e.status_code == 200, e.text
    items = e.json()["items"]
    assert [(i["state"], i["attempt"], i["worker"]) for i in items] == [
        ("QUEUED", 0, None),
        ("RUNNING", 1, "w-9"),
        ("FAILED", 1, "w-9"),
    ]
    assert items[-1]["reason"] == "boom"
    async with sessions() as s:
        counted = await s.execute(
            text("SELECT count(*) FROM job_events WHERE job_id = ANY(:ids)"),
            {"ids": [element_id(parent.id, 0), element_id(parent.id, 1)]},
        )
        assert counted.scalar_one() == 0  # the stream gets the array's events only


async def test_an_array_running_then_final_is_two_events(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant_id = uuid.UUID(tenant.tenant_id)
    parent, array = new_array(tenant_id, 1)
    async with sessions() as s, s.begin():
        s.add(parent)
        await s.flush()
        s.add(array)
    element = element_id(parent.id, 0)
    async with sessions() as s, s.begin():
        s.add(new_job(tenant_id, id=element, array_id=parent.id, array_index=0, state="QUEUED"))
    async with sessions() as s, s.begin():
        await s.execute(
            text("UPDATE jobs SET state = :state WHERE id = :id"),
            {"state": JobState.SUCCEEDED.value, "id": element},
        )
    r = await client.get(f"/v1/jobs/{parent.id}/events", headers=tenant.headers)
    assert [i["state"] for i in r.json()["items"]] == ["RUNNING", "SUCCEEDED"]


async def test_another_tenants_job_and_an_unknown_element_are_404(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    other = await make_tenant(client)
    job = new_job(uuid.UUID(other.tenant_id))
    parent, array = new_array(uuid.UUID(tenant.tenant_id), 2)
    async with sessions() as s, s.begin():
        s.add_all([job, parent])
        await s.flush()
        s.add(array)
    for path in (str(job.id), public_id(parent.id, 2), "not-a-job", f"{job.id}:0"):
        r = await client.get(f"/v1/jobs/{path}/events", headers=tenant.headers)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("application/problem+json")
    pending = await client.get(f"/v1/jobs/{public_id(parent.id, 1)}/events", headers=tenant.headers)
    assert pending.status_code == 200
    assert pending.json() == {"items": []}  # not scheduled yet
