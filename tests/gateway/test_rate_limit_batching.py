"""The rate limit's checks of one key go to Redis together (shared/ratelimit.py): the answer
is exactly what one call per request would give (the burst and no more passes, across
limiters standing for several gateway replicas), with far fewer Redis calls."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.gateway.settings import GatewaySettings
from shared.ratelimit import RateLimiter


@pytest.fixture
async def redis(test_env: dict[str, str]) -> AsyncIterator[Redis]:
    client = Redis.from_url(GatewaySettings().redis.url)
    yield client
    await client.aclose()


def limiter(redis: Redis, prefix: str) -> RateLimiter:
    return RateLimiter(redis, prefix=prefix)


async def test_concurrent_checks_share_calls_and_pass_exactly_the_burst(redis: Redis) -> None:
    prefix = f"stratus_test:rl:{secrets.token_hex(4)}:"
    rl = limiter(redis, prefix)
    # 1 request/s with a burst of 10: nothing refills during the test.
    verdicts = await asyncio.gather(*(rl.check("t", 1.0, burst=10) for _ in range(50)))
    assert sum(v.allowed for v in verdicts) == 10
    assert all(v.allowed for v in verdicts[:10])  # in the order they asked
    refused = [v for v in verdicts if not v.allowed]
    assert all(0 < v.retry_after_s <= 1.0 for v in refused)
    assert rl.calls < 10  # 50 checks, a few Redis calls
    assert not rl.degraded
    # One at a time, each its own call: still refused, nothing more passes.
    assert not (await rl.check("t", 1.0, burst=10)).allowed
    await redis.delete(prefix + "t")


async def test_the_limit_is_shared_by_replicas_checking_at_once(redis: Redis) -> None:
    prefix = f"stratus_test:rl:{secrets.token_hex(4)}:"
    replicas = [limiter(redis, prefix) for _ in range(3)]
    verdicts = await asyncio.gather(
        *(rl.check("t", 1.0, burst=12) for rl in replicas for _ in range(20))
    )
    assert sum(v.allowed for v in verdicts) == 12
    # Another key has its own budget.
    other = await asyncio.gather(*(replicas[0].check("u", 1.0, burst=3) for _ in range(5)))
    assert [v.allowed for v in other] == [True, True, True, False, False]
    await redis.delete(prefix + "t", prefix + "u")


async def test_one_check_at_a_time_refills_at_the_rate(redis: Redis) -> None:
    prefix = f"stratus_test:rl:{secrets.token_hex(4)}:"
    rl = limiter(redis, prefix)
    # 20/s, burst 2: two pass, the third waits about one emission interval (50 ms).
    assert (await rl.check("t", 20.0, burst=2)).allowed
    assert (await rl.check("t", 20.0, burst=2)).allowed
    third = await rl.check("t", 20.0, burst=2)
    assert not third.allowed
    assert 0 < third.retry_after_s <= 0.05
    await asyncio.sleep(third.retry_after_s + 0.01)
    assert (await rl.check("t", 20.0, burst=2)).allowed
    await redis.delete(prefix + "t")


async def test_a_cancelled_check_does_not_hold_up_the_others(redis: Redis) -> None:
    prefix = f"stratus_test:rl:{secrets.token_hex(4)}:"
    rl = limiter(redis, prefix)
    tasks = [asyncio.create_task(rl.check("t", 1.0, burst=5)) for _ in range(6)]
    await asyncio.sleep(0)
    tasks[0].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    # The cancelled check left the call before it was sent: it used no token.
    assert [getattr(r, "allowed", None) for r in results[1:]] == [True] * 5
    assert rl.calls == 1
    await redis.delete(prefix + "t")
