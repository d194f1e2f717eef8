"""Global per-tenant rate limits: GCRA (a token bucket without a refill loop) in one Lua
script on Redis, so that every gateway replica draws on the same budget. The clock is Redis'
own (``TIME``), never the replicas'. When Redis is unreachable the limiter falls back to the
same algorithm in process memory: each replica then enforces the limit on its own (the
effective limit is multiplied by the number of replicas) instead of failing requests. A
circuit breaker (``redis`` in ``/metrics``) keeps a dead Redis from costing each request a
timeout: while it is open the fallback answers at once, and a trial call closes it again."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.logging import get_logger
from shared.resilience import CircuitBreaker, CircuitOpen
from shared.telemetry import watch_breaker

log = get_logger(__name__)

# KEYS[1]: bucket; ARGV[1]: emission interval (µs); ARGV[2]: burst tolerance (µs).
# Returns {allowed (0/1), retry after (µs)}.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat + interval - tolerance
if allow_at > now then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil((tolerance + interval) / 1000) + 1)
return {1, 0}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: float


def _params(rate_per_s: float, burst: float | None) -> tuple[int, int]:
    """(emission interval, burst tolerance) in µs: ``burst`` requests pass at once."""
    interval = 1_000_000 / rate_per_s
    tolerance = interval * max(burst if burst is not None else rate_per_s, 1)
    return max(1, round(interval)), round(tolerance)


class LocalGcra:
    """The same algorithm in one process (the fallback)."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}

    def check(self, key: str, rate_per_s: float, burst: float | None = None) -> Verdict:
        interval, tolerance = _params(rate_per_s, burst)
        now = time.monotonic() * 1_000_000
        tat = max(self._tat.get(key, now), now)
        allow_at = tat + interval - tolerance
        if allow_at > now:
            return Verdict(False, (allow_at - now) / 1_000_000)
        self._tat[key] = tat + interval
        if len(self._tat) > 100_000:
            self._tat.clear()
        return Verdict(True, 0.0)


def _is_redis_failure(exc: BaseException) -> bool:
    return isinstance(exc, RedisError | OSError)


class RateLimiter:
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "stratus:rl:",
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.local = LocalGcra()
        self._script = redis.register_script(GCRA)
        self.degraded = False
        self.breaker = breaker or watch_breaker(
            CircuitBreaker(
                "redis", failure_threshold=3, reset_timeout_s=2.0, is_failure=_is_redis_failure
            )
        )

    async def check(self, key: str, rate_per_s: float, burst: float | None = None) -> Verdict:
        if rate_per_s <= 0 or math.isinf(rate_per_s):
            return Verdict(True, 0.0)
        interval, tolerance = _params(rate_per_s, burst)
        try:
            allowed, retry_us = await self.breaker.call(
                lambda: self._script(keys=[self.prefix + key], args=[interval, tolerance])
            )
        except (CircuitOpen, RedisError, OSError) as exc:
            if not self.degraded:
                log.warning("rate_limit_degraded", error=type(exc).__name__)
                self.degraded = True
            return self.local.check(key, rate_per_s, burst)
        if self.degraded:
            log.info("rate_limit_restored")
        self.degraded = False
        return Verdict(bool(allowed), int(retry_us) / 1_000_000)
