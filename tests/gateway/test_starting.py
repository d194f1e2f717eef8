"""A gateway started while RabbitMQ is unreachable: it serves at once, answers the API with
503 and ``Retry-After`` (problem+json) and ``/readyz`` with what it waits for, then serves
normally once the broker answers (reached through a proxy the test opens late)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.gateway.conftest import TenantKey
from tests.integration.test_start_any_order import closed_proxy
from tests.netfault import TcpProxy


@pytest.fixture
async def late_broker() -> AsyncIterator[tuple[TcpProxy, httpx.AsyncClient]]:
    gw = GatewaySettings()
    proxy = closed_proxy(gw.rabbit.port)
    gw = gw.model_copy(update={"rabbit": gw.rabbit.model_copy(update={"port": proxy.port})})
    app = create_app(gw)
    try:
        async with app.router.lifespan_context(app):  # returns while still waiting
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
                yield proxy, c
    finally:
        if proxy._server is not None:
            await proxy.stop()


async def test_a_starting_gateway_answers_503_with_retry_after_then_serves(
    tenant: TenantKey, late_broker: tuple[TcpProxy, httpx.AsyncClient]
) -> None:
    proxy, c = late_broker
    r = await c.get("/v1/jobs", headers=tenant.headers)
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["retry-after"]) >= 1
    ready = await c.get("/readyz")
    assert (ready.status_code, ready.json()["checks"]) == (503, {"rabbitmq": "waiting"})

    await proxy.start()
    deadline = time.monotonic() + 30
    while (await c.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert (await c.get("/v1/jobs", headers=tenant.headers)).status_code == 200
