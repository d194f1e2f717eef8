"""The gateway with Redis gone: requests are still served (the rate limit falls back to a
per-process limit), the ``redis`` circuit opens so that a dead Redis costs no time per
request, and it closes again by itself when Redis is back.

Redis is reached through a TCP proxy that the test closes, reopens on the same port as a
black hole, then mends, so the shared server keeps running for everything else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.ratelimit import RateLimiter
from shared.resilience import BreakerState
from tests.gateway.conftest import TenantKey
from tests.gateway.test_outage import black_hole, until_open
from tests.netfault import TcpProxy

OPEN = 'stratus_circuit_state{circuit="redis"} 2.0'
CLOSED = 'stratus_circuit_state{circuit="redis"} 0.0'


@pytest.fixture
async def redis_proxied() -> AsyncIterator[tuple[TcpProxy, httpx.AsyncClient, RateLimiter]]:
    gw = GatewaySettings()
    port = int(gw.redis.url.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(port)
    await proxy.start()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    gw = gw.model_copy(update={"redis": gw.redis.model_copy(update={"url": url})})
    app = create_app(gw)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield proxy, c, app.state.rate_limiter
    with contextlib.suppress(Exception):
        await proxy.stop()


async def test_redis_outage_is_served_from_the_local_limit_and_recovers(
    tenant: TenantKey, redis_proxied: tuple[TcpProxy, httpx.AsyncClient, RateLimiter]
) -> None:
    proxy, c, limiter = redis_proxied
    assert (await c.get("/v1/jobs", headers=tenant.headers)).status_code == 200
    assert not limiter.degraded  # the global limit, on Redis
    assert CLOSED in (await c.get("/metrics")).text

    breaker = limiter.breaker
    await black_hole(proxy)
    answers = await until_open(
        proxy,
        breaker,
        lambda: c.get("/v1/jobs", headers=tenant.headers),
        connect_timeout_s=limiter.redis.connection_pool.connection_kwargs["socket_connect_timeout"],
    )
    assert [r.status_code for r in answers] == [200] * len(answers)
    assert limiter.degraded
    assert OPEN in (await c.get("/metrics")).text
    assert (await c.get("/readyz")).status_code == 503  # Redis is a dependency

    proxy.resume()
    await asyncio.sleep(breaker.reset_timeout_s)
    assert breaker.state is BreakerState.HALF_OPEN
    assert (await c.get("/v1/jobs", headers=tenant.headers)).status_code == 200  # the trial
    assert breaker.state is BreakerState.CLOSED
    assert not limiter.degraded
    assert CLOSED in (await c.get("/metrics")).text
