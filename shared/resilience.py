"""Resilience at the adapter boundary: an asyncio circuit breaker (one per dependency) and
retries with backoff as a value. Generic: no knowledge of what is being called.

Breaker states follow pybreaker: *closed* (calls pass, failures are counted), *open* (calls
fail fast with ``CircuitOpen`` until ``reset_timeout_s`` has passed), *half-open* (a limited
number of trial calls; a success closes the circuit, a failure opens it again).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from shared.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Exception):
    """The dependency's circuit is open: retry after ``retry_after`` seconds."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit {name!r} is open; retry in {retry_after:.1f}s")
        self.name = name
        self.retry_after = retry_after


class RetriesExhausted(Exception):
    """Every attempt failed with a transient error; ``__cause__`` is the last one."""


def _always(_exc: BaseException) -> bool:
    return True


@dataclass
class CircuitBreaker:
    """Counts consecutive failures of one dependency; ``is_failure`` decides what counts
    (a "not found" is an answer, not an outage)."""

    name: str
    failure_threshold: int = 5
    reset_timeout_s: float = 5.0
    half_open_max_calls: int = 1
    is_failure: Callable[[BaseException], bool] = _always
    clock: Callable[[], float] = time.monotonic
    _state: BreakerState = field(default=BreakerState.CLOSED, init=False)
    _failures: int = field(default=0, init=False)
    _opened_at: float = field(default=0.0, init=False)
    _trials: int = field(default=0, init=False)

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._remaining() <= 0:
            self._state = BreakerState.HALF_OPEN
            self._trials = 0
        return self._state

    def _remaining(self) -> float:
        return self._opened_at + self.reset_timeout_s - self.clock()

    def before_call(self) -> None:
        """Raise ``CircuitOpen`` unless a call may go through now."""
        state = self.state
        if state is BreakerState.OPEN:
            raise CircuitOpen(self.name, max(self._remaining(), 0.0))
        if state is BreakerState.HALF_OPEN:
            if self._trials >= self.half_open_max_calls:
                raise CircuitOpen(self.name, min(self.reset_timeout_s, 1.0))
            self._trials += 1

    def abandon(self) -> None:
        """A call that was let through ended with no verdict (cancelled): free its trial."""
        if self._state is BreakerState.HALF_OPEN:
            self._trials = max(self._trials - 1, 0)

    def on_success(self) -> None:
        if self._state is not BreakerState.CLOSED:
            log.info("circuit_closed", circuit=self.name)
        self._state = BreakerState.CLOSED
        self._failures = 0

    def on_failure(self, exc: BaseException) -> None:
        if not self.is_failure(exc):
            self.on_success()
            return
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            if self._state is not BreakerState.OPEN:
                log.warning("circuit_opened", circuit=self.name, error=type(exc).__name__)
            self._state = BreakerState.OPEN
            self._opened_at = self.clock()

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        self.before_call()
        try:
            result = await fn()
        except asyncio.CancelledError:
            if self._state is BreakerState.HALF_OPEN:
                self._trials = max(self._trials - 1, 0)
            raise
        except Exception as exc:
            self.on_failure(exc)
            raise
        self.on_success()
        return result


@dataclass(frozen=True)
class RetryPolicy:
    """``initial_s * multiplier**(n-1)`` between attempts, capped, with jitter; at most
    ``max_attempts`` calls in all."""

    initial_s: float = 0.2
    multiplier: float = 2.0
    max_interval_s: float = 5.0
    max_attempts: int = 6
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        base = min(self.initial_s * self.multiplier ** max(attempt - 1, 0), self.max_interval_s)
        return float(base * (1 + self.jitter * (2 * random.random() - 1)))


async def retry(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    breaker: CircuitBreaker | None = None,
    what: str = "call",
) -> T:
    """Call ``fn`` until it succeeds, a permanent error is raised, or the attempts run out
    (``RetriesExhausted`` from the last error). An open circuit waits, never spins."""
    attempt = 0
    while True:
        attempt += 1
        try:
            if breaker is None:
                return await fn()
            return await breaker.call(fn)
        except CircuitOpen as exc:
            if attempt >= policy.max_attempts:
                raise RetriesExhausted(f"{what}: {exc}") from exc
            await asyncio.sleep(max(exc.retry_after, policy.delay(attempt)))
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt >= policy.max_attempts:
                raise RetriesExhausted(
                    f"{what} failed {attempt} times: {type(exc).__name__}: {exc}"
                ) from exc
            log.info("retrying", what=what, attempt=attempt, error=type(exc).__name__)
            await asyncio.sleep(policy.delay(attempt))
