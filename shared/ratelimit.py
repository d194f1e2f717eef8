"""Global per-tenant rate limits: GCRA (a token bucket without a refill loop) in one Lua
script on Redis, so that every gateway replica draws on the same budget. The clock is Redis'
own (``TIME``), never the replicas'. When Redis is unreachable the limiter falls back to the
same algorithm in process memory: each replica then enforces the limit on its own (the
effective limit is multiplied by the number of replicas) instead of failing requests. A
circuit breaker (``redis`` in ``/metrics``) keeps a dead Redis from costing each request a
timeout: while it is open the fallback answers at once, and a trial call closes it again.

One round trip per key at a time: the checks of one key that arrive while a call for it is
on its way to Redis wait and go together in the next call, which asks the script for ``n``
requests at once. The script answers exactly what ``n`` one-request calls at that instant
would have answered (the first ``k`` that fit pass, the rest get the same retry-after), so
the limit stays global and exact; under load a replica spends one Redis call on many
requests instead of one each, and a request waits at most for the call already in flight.

The state of a key is bounded by the rate in force: its theoretical arrival time is never
taken as more than one burst (``tolerance``) ahead of now at the current rate, and the key
expires once that has passed. So a tiny rate that was set once leaves no debt beyond one
burst of the rate now in force: raising a tenant's rate takes effect at once."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.logging import get_logger
from shared.resilience import CircuitBreaker, CircuitOpen
from shared.telemetry import watch_breaker

log = get_logger(__name__)

# KEYS[1]: bucket; ARGV[1]: emission interval (µs); ARGV[2]: burst tolerance (µs); ARGV[3]:
# how many requests at once (n). The first k of them pass, k as n one-request calls in a row
# would let through: request i (from 0) passes when tat + (i + 1) * interval - tolerance
# <= now. A stored tat further ahead than one burst at the current rate (left by an earlier,
# lower rate) counts as one burst, and is stored so, with the current rate's expiry.
# Returns {k, retry after (µs) for the other n - k, 0 when none}.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local stored = tonumber(redis.call('GET', KEYS[1]) or now)
local tat = stored
if tat < now then tat = now end
if tat > now + tolerance then tat = now + tolerance end
local k = math.floor((now + tolerance - tat) / interval)
if k > n then k = n end
if k < 0 then k = 0 end
if k > 0 or tat < stored then
  tat = tat + k * interval
  redis.call('SET', KEYS[1], tat, 'PX', math.ceil((tolerance + interval) / 1000) + 1)
end
if k < n then
  return {k, tat + interval - tolerance - now}
end
return {k, 0}
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
        # how far the tat is ahead of now, within one burst: offsets from now, so that a
        # huge interval is not lost in the rounding of a large clock value
        ahead = min(max(self._tat.get(key, now) - now, 0.0), tolerance)
        wait = ahead + interval - tolerance
        if wait > 0:
            return Verdict(False, wait / 1_000_000)
        self._tat[key] = now + ahead + interval
        if len(self._tat) > 100_000:
            self._tat.clear()
        return Verdict(True, 0.0)


def _is_redis_failure(exc: BaseException) -> bool:
    return isinstance(exc, RedisError | OSError)


@dataclass
class _Waiting:
    """Checks of one key waiting for the next Redis call (the latest rate applies to all)."""

    rate_per_s: float
    burst: float | None
    futures: list[asyncio.Future[Verdict]] = field(default_factory=list)
    sender: asyncio.Future[None] | None = None


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
        self._waiting: dict[str, _Waiting] = {}  # keys whose sender task is running
        self.calls = 0  # Redis calls made (for tests and curiosity)

    async def check(self, key: str, rate_per_s: float, burst: float | None = None) -> Verdict:
        if rate_per_s <= 0 or math.isinf(rate_per_s):
            return Verdict(True, 0.0)
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = _Waiting(rate_per_s, burst)
            # The call runs in a task of its own, so a caller that goes away (cancelled)
            # cannot take the answer of the others with it.
            waiting.sender = asyncio.ensure_future(self._send(key, waiting))
        else:
            waiting.rate_per_s, waiting.burst = rate_per_s, burst
        waiting.futures.append(future)
        return await future

    async def _send(self, key: str, waiting: _Waiting) -> None:
        """Call Redis for ``key`` until no check of it is waiting any more."""
        futures: list[asyncio.Future[Verdict]] = []
        try:
            while True:
                futures = [f for f in waiting.futures if not f.done()]
                waiting.futures = []
                if not futures:
                    return
                verdicts = await self._verdicts(key, waiting, len(futures))
                for future, verdict in zip(futures, verdicts, strict=True):
                    if not future.done():
                        future.set_result(verdict)
        except BaseException as exc:  # a bug or shutdown: no check may wait forever
            for future in futures + waiting.futures:
                if not future.done():
                    future.set_exception(exc)
            raise
        finally:
            del self._waiting[key]

    async def _verdicts(self, key: str, waiting: _Waiting, n: int) -> list[Verdict]:
        rate, burst = waiting.rate_per_s, waiting.burst
        interval, tolerance = _params(rate, burst)
        try:
            self.calls += 1
            allowed, retry_us = await self.breaker.call(
                lambda: self._script(keys=[self.prefix + key], args=[interval, tolerance, n])
            )
        except (CircuitOpen, RedisError, OSError) as exc:
            if not self.degraded:
                log.warning("rate_limit_degraded", error=type(exc).__name__)
                self.degraded = True
            return [self.local.check(key, rate, burst) for _ in range(n)]
        if self.degraded:
            log.info("rate_limit_restored")
        self.degraded = False
        allowed = int(allowed)
        refused = Verdict(False, int(retry_us) / 1_000_000)
        return [Verdict(True, 0.0) if i < allowed else refused for i in range(n)]
