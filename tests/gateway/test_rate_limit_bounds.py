"""The rate limiter's state is bounded by the rate in force (shared/ratelimit.py): a tiny
rate set once leaves no lockout behind when the rate is raised, in Redis and in the
in-process fallback; a rate below the minimum is refused as a quota."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from services.gateway.settings import GatewaySettings
from shared.ratelimit import LocalGcra, RateLimiter
from tests.gateway.conftest import ADMIN, TenantKey
from tests.gateway.test_jobs_api import assert_problem


@pytest.fixture
async def redis(test_env: dict[str, str]) -> AsyncIterator[Redis]:
    client = Redis.from_url(GatewaySettings().redis.url)
    yield client
    await client.aclose()


async def test_a_tiny_rate_leaves_at_most_one_burst_of_the_new_rate(redis: Redis) -> None:
    prefix = f"stratus_test:rl:{secrets.token_hex(4)}:"
    rl = RateLimiter(redis, prefix=prefix)
    assert (await rl.check("t", 1e-9)).allowed
    assert not (await rl.check("t", 1e-9)).allowed
    again = await rl.check("t", 5.0)
    # at most one emission interval of the new rate (0.2 s), not the old one's 31 years
    assert again.allowed or again.retry_after_s <= 0.2
    assert not rl.degraded
    await redis.delete(prefix + "t")


async def test_the_stored_state_expires_within_one_burst_of_the_rate(redis: Redis) -> None:
    prefix = f"stratus_test:rl:{secrets.token_hex(4)}:"
    rl = RateLimiter(redis, prefix=prefix)
    for _ in range(3):
        await rl.check("t", 1e-9)
    for _ in range(20):
        await rl.check("t", 5.0)
    ttl_ms = await redis.pttl(prefix + "t")
    assert 0 < ttl_ms <= 1_300  # burst (1 s) + one interval (0.2 s) at 5/s
    await redis.delete(prefix + "t")


def test_the_fallback_forgets_an_old_rate_too() -> None:
    local = LocalGcra()
    assert local.check("t", 1e-9).allowed
    assert not local.check("t", 1e-9).allowed
    again = local.check("t", 5.0)
    assert again.allowed or again.retry_after_s <= 0.2


@pytest.mark.parametrize("rate", [1e-9, 0.0, -1.0, True, "5"])
async def test_a_rate_below_the_minimum_or_not_a_number_is_refused(
    client: httpx.AsyncClient, tenant: TenantKey, rate: object
) -> None:
    before = (await client.get(f"/v1/tenants/{tenant.tenant_id}", headers=ADMIN)).json()
    r = await client.patch(
        f"/v1/tenants/{tenant.tenant_id}",
        json={"quotas": {"requests_per_second": rate}},
        headers=ADMIN,
    )
    assert_problem(r, 422)
    after = (await client.get(f"/v1/tenants/{tenant.tenant_id}", headers=ADMIN)).json()
    assert after["quotas"] == before["quotas"]


async def test_raising_the_rate_takes_effect_at_once(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    path = f"/v1/tenants/{tenant.tenant_id}"
    slow = {"quotas": {"requests_per_second": 0.01}}
    assert (await client.patch(path, json=slow, headers=ADMIN)).status_code == 200
    await client.get("/v1/kernels", headers=tenant.headers)
    refused = await client.get("/v1/kernels", headers=tenant.headers)
    assert_problem(refused, 429)
    fast = {"quotas": {"requests_per_second": 1000}}
    assert (await client.patch(path, json=fast, headers=ADMIN)).status_code == 200
    waits = []
    for _ in range(50):
        r = await client.get("/v1/kernels", headers=tenant.headers)
        if r.status_code == 200:
            break
        waits.append(int(r.headers["Retry-After"]))
        await asyncio.sleep(0.1)
    assert r.status_code == 200, waits
    assert all(w <= 1 for w in waits), waits
