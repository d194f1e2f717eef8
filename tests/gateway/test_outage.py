"""The gateway with its database gone: 503 with Retry-After within 1 s, known keys still
authenticate from the cache, the circuit shows in /metrics, and it recovers by itself. With
a slow link to it: slow answers, not failures.

The outage is made with a TCP proxy in front of the real PostgreSQL that this test closes
and reopens, so the shared server keeps running for everything else."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.db.models import Job
from shared.settings import CommonSettings
from tests.gateway.conftest import TenantKey
from tests.gateway.test_jobs_api import MC, assert_problem
from tests.netfault import TcpProxy


@pytest.fixture
async def proxied(settings: CommonSettings) -> AsyncIterator[tuple[TcpProxy, httpx.AsyncClient]]:
    proxy = TcpProxy(settings.postgres.port)
    await proxy.start()
    gw = GatewaySettings()
    gw = gw.model_copy(update={"postgres": gw.postgres.model_copy(update={"port": proxy.port})})
    app = create_app(gw)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield proxy, c
    with contextlib.suppress(Exception):
        await proxy.stop()


async def test_database_outage_is_503_fast_and_recovers(
    proxied: tuple[TcpProxy, httpx.AsyncClient], tenant: TenantKey
) -> None:
    proxy, c = proxied
    assert (await c.get("/v1/jobs", headers=tenant.headers)).status_code == 200  # key cached
    await proxy.stop()
    for _ in range(5):
        t0 = time.monotonic()
        r = await c.post("/v1/jobs", json=MC, headers=tenant.headers)
        assert time.monotonic() - t0 < 1.0
        assert_problem(r, 503)  # not 401: the key was authenticated from the cache
        assert int(r.headers["retry-after"]) >= 1
    assert (await c.get("/readyz")).status_code == 503
    metrics = (await c.get("/metrics")).text
    assert 'stratus_circuit_state{circuit="postgres"} 2.0' in metrics
    await proxy.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = await c.post("/v1/jobs", json=MC, headers=tenant.headers)
        if r.status_code == 201:
            break
        await asyncio.sleep(0.2)
    assert r.status_code == 201
    assert 'stratus_circuit_state{circuit="postgres"} 0.0' in (await c.get("/metrics")).text


async def test_a_slow_database_link_is_slow_not_an_outage(
    proxied: tuple[TcpProxy, httpx.AsyncClient],
    tenant: TenantKey,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Every packet to and from PostgreSQL delayed: concurrent submissions all succeed, each
    once, and the circuit stays closed (slowness is no connectivity failure)."""
    proxy, c = proxied
    assert (await c.get("/v1/jobs", headers=tenant.headers)).status_code == 200
    proxy.latency_s = 0.03  # each way, per chunk: a statement's round trip takes 60 ms more
    rs = await asyncio.gather(
        *(c.post("/v1/jobs", json=MC, headers=tenant.headers) for _ in range(20))
    )
    assert [r.status_code for r in rs] == [201] * 20, [r.text for r in rs if r.status_code != 201]
    proxy.latency_s = 0.0
    async with sessions() as s:
        stored = await s.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == uuid.UUID(tenant.tenant_id))
        )
    assert stored == 20
    assert len({r.json()["id"] for r in rs}) == 20
    assert 'stratus_circuit_state{circuit="postgres"} 0.0' in (await c.get("/metrics")).text
