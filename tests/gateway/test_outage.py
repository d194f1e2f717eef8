"""The gateway with its database gone: 503 with Retry-After, and once the circuit is open
without trying a connection, so without waiting for the connect timeout; known keys still
authenticate from the cache, the circuit shows in /metrics, and it recovers by itself. With
a slow link to it: slow answers, not failures.

The outage is made with a TCP proxy in front of the real PostgreSQL that this test breaks
and mends, so the shared server keeps running for everything else. The outbox relay is off:
every connection the proxy sees is one a request opened."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.db.models import Job
from shared.resilience import BreakerState, CircuitBreaker
from shared.settings import CommonSettings
from tests.gateway.conftest import TenantKey
from tests.gateway.test_jobs_api import MC, assert_problem
from tests.netfault import TcpProxy


@dataclass
class Proxied:
    proxy: TcpProxy
    client: httpx.AsyncClient
    app: FastAPI


@pytest.fixture
async def proxied(settings: CommonSettings) -> AsyncIterator[Proxied]:
    proxy = TcpProxy(settings.postgres.port)
    await proxy.start()
    gw = GatewaySettings()
    gw = gw.model_copy(
        update={
            "postgres": gw.postgres.model_copy(update={"port": proxy.port}),
            "outbox": gw.outbox.model_copy(update={"enabled": False}),
        }
    )
    app = create_app(gw)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield Proxied(proxy, c, app)
    with contextlib.suppress(Exception):
        await proxy.stop()


async def black_hole(proxy: TcpProxy) -> None:
    """The server goes away (its connections with it), and what answers at its address then
    swallows every packet: a connection attempt waits for the client's whole connect timeout."""
    await proxy.stop()
    await proxy.start()
    proxy.stall()


async def until_open(
    proxy: TcpProxy,
    breaker: CircuitBreaker,
    send: Callable[[], Awaitable[httpx.Response]],
    *,
    connect_timeout_s: float,
) -> list[httpx.Response]:
    """Every answer to ``send``, called until the open circuit has answered twice; each of
    those two without a connection tried, so before the connect timeout."""
    loop = asyncio.get_running_loop()
    answers: list[httpx.Response] = []
    answered_open = 0
    for _ in range(3 * breaker.failure_threshold):
        tried, was_open = len(proxy.accepted), breaker.state is BreakerState.OPEN
        t0 = loop.time()
        answers.append(await send())
        took = loop.time() - t0
        if was_open:
            assert len(proxy.accepted) == tried
            assert took < connect_timeout_s, took
            answered_open += 1
            if answered_open == 2:
                return answers
    raise AssertionError("the circuit did not open")


async def test_database_outage_is_503_fast_and_recovers(
    proxied: Proxied, tenant: TenantKey
) -> None:
    proxy, c = proxied.proxy, proxied.client
    breaker = proxied.app.state.resources.db_breaker
    assert (await c.get("/v1/jobs", headers=tenant.headers)).status_code == 200  # key cached
    await black_hole(proxy)
    answers = await until_open(
        proxy,
        breaker,
        lambda: c.post("/v1/jobs", json=MC, headers=tenant.headers),
        connect_timeout_s=proxied.app.state.settings.postgres.connect_timeout_s,
    )
    for r in answers:
        assert_problem(r, 503)  # not 401: the key was authenticated from the cache
        assert int(r.headers["retry-after"]) >= 1
    assert (await c.get("/readyz")).status_code == 503
    metrics = (await c.get("/metrics")).text
    assert 'stratus_circuit_state{circuit="postgres"} 2.0' in metrics
    proxy.resume()
    await asyncio.sleep(breaker.reset_timeout_s)
    # no longer open; the gateway's own readers (the event hub, the wake listener) retry on
    # their own and may have made the trial call already, closing it
    assert breaker.state in (BreakerState.HALF_OPEN, BreakerState.CLOSED)
    r = await c.post("/v1/jobs", json=MC, headers=tenant.headers)  # the trial call, or after it
    assert r.status_code == 201, r.text
    assert 'stratus_circuit_state{circuit="postgres"} 0.0' in (await c.get("/metrics")).text


async def test_a_slow_database_link_is_slow_not_an_outage(
    proxied: Proxied,
    tenant: TenantKey,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Every packet to and from PostgreSQL delayed: concurrent submissions all succeed, each
    once, and the circuit stays closed (slowness is no connectivity failure)."""
    proxy, c = proxied.proxy, proxied.client
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
