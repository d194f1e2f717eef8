"""``GET /v1/admin/pools``: what the scheduler's autoscaler wrote, with the live workers."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler.autoscaler import Autoscaler
from services.scheduler.settings import AutoscaleSettings, CudaPoolSettings, PoolSettings
from services.worker import service as worker_service
from shared.db.models import Worker, WorkerPool
from tests.gateway.conftest import ADMIN, TenantKey
from tests.gateway.test_jobs_api import MC, assert_problem
from tests.scheduler.test_autoscaler import MemoryBackend


async def test_pools_show_the_autoscalers_view_and_live_workers(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], tenant: TenantKey
) -> None:
    name = f"pool-test-{uuid.uuid4().hex[:8]}"
    for _ in range(2):  # waiting, but held: their tenant is suspended
        r = await client.post("/v1/jobs", json={**MC, "device": "cpu"}, headers=tenant.headers)
        assert r.status_code == 201, r.text
    await suspend(client, tenant, True)
    async with sessions() as session, session.begin():
        await session.execute(delete(WorkerPool))
        await worker_service.heartbeat(
            session=session, worker=name, device="cpu", concurrency=3, lease_s=30
        )
    settings = AutoscaleSettings(
        enabled=True,
        cooldown_s=30,
        # jobs other tests left waiting in this session's database are demand too: sized so
        # that any such backlog still asks for one worker, and the minimum decides
        cpu=PoolSettings(min_workers=2, max_workers=5, target_jobs_per_worker=1e9),
        cuda=CudaPoolSettings(min_workers=0, max_workers=1),
    )
    backend = MemoryBackend(cpu=1)
    assert [d.target for d in await Autoscaler(settings, backend, worker_ttl_s=15).step(sessions)]
    try:
        r = await client.get("/v1/admin/pools", headers=ADMIN)
        assert r.status_code == 200, r.text
        pools = {p["pool"]: p for p in r.json()["items"]}
        assert set(pools) == {"cpu", "cuda"}
        cpu = pools["cpu"]
        assert cpu["autoscaling"] is True
        assert (cpu["min_workers"], cpu["max_workers"], cpu["cooldown_s"]) == (2, 5, 30)
        assert cpu["current_workers"] == 2  # raised to the minimum
        assert cpu["desired_workers"] == 2
        held = cpu["held_jobs"]  # waiting jobs that are not demand (quotas and the like)
        assert cpu["backend"] == "memory"
        assert cpu["decisions"][0]["action"] == "up"
        assert cpu["decisions"][0]["from"] == 1
        assert cpu["decisions"][0]["to"] == 2
        mine = [w for w in cpu["workers"] if w["id"] == name]
        assert mine
        assert mine[0]["concurrency"] == 3
        assert cpu["live_workers"] >= 1
        assert pools["cuda"]["current_workers"] == 0
        assert pools["cuda"]["min_workers"] == 0
        async with sessions() as session, session.begin():
            await session.execute(update(Worker).where(Worker.id == name).values(stopping=True))
        again = {
            p["pool"]: p
            for p in (await client.get("/v1/admin/pools", headers=ADMIN)).json()["items"]
        }
        assert [w["stopping"] for w in again["cpu"]["workers"] if w["id"] == name] == [True]
        assert again["cpu"]["live_workers"] == cpu["live_workers"] - 1
        await suspend(client, tenant, False)  # its two jobs are demand now, no longer held
        await Autoscaler(settings, backend, worker_ttl_s=15).step(sessions)
        after = (await client.get("/v1/admin/pools", headers=ADMIN)).json()["items"]
        assert {p["pool"]: p for p in after}["cpu"]["held_jobs"] == held - 2
    finally:
        async with sessions() as session, session.begin():
            await session.execute(delete(Worker).where(Worker.id == name))
            await session.execute(delete(WorkerPool))
    assert_problem(await client.get("/v1/admin/pools", headers=tenant.headers), 403)
    assert_problem(await client.get("/v1/admin/pools"), 401)
    audit = (await client.get("/v1/audit", headers=ADMIN)).json()["items"]
    assert any(a["action"] == "pools.read" for a in audit)


async def suspend(client: httpx.AsyncClient, tenant: TenantKey, suspended: bool) -> None:
    r = await client.patch(
        f"/v1/tenants/{tenant.tenant_id}", json={"suspended": suspended}, headers=ADMIN
    )
    assert r.status_code == 200, r.text


async def test_without_an_autoscaler_the_pools_still_list_live_workers(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions() as session, session.begin():
        await session.execute(delete(WorkerPool))
    r = await client.get("/v1/admin/pools", headers=ADMIN)
    assert r.status_code == 200
    for pool in r.json()["items"]:
        assert pool["autoscaling"] is False
        assert "current_workers" not in pool
        assert isinstance(pool["live_workers"], int)
