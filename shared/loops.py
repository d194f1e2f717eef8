"""Small background loops with an interval, an optional wake-up event and error backoff."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Awaitable, Callable

from shared.logging import get_logger
from shared.resilience import CircuitBreaker, CircuitOpen

log = get_logger(__name__)


async def periodic(
    name: str,
    step: Callable[[], Awaitable[object]],
    *,
    interval_s: float,
    wake: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    min_gap_s: float = 0.0,
    breaker: CircuitBreaker | None = None,
) -> None:
    """Run ``step`` every ``interval_s`` (or sooner when woken), backing off on errors.

    ``min_gap_s``: a wake-up coming sooner than this after the previous step starts the next
    one only once the gap has passed, so that a stream of wake-ups (one per event under load)
    is served by one step per gap instead of back-to-back steps; an isolated wake-up is
    served at once.

    With ``stop``: once it is set the loop returns after the step in progress (a graceful
    shutdown sets it, waits for the loop, and cancels only what outlives its grace).

    With ``breaker`` (the service's PostgreSQL breaker, for steps that work on the database):
    each step's outcome is reported to it (only connectivity errors count), and while it is
    open no step runs; when it turns half-open one step tries the database again. Its state
    is what ``/metrics`` shows (``stratus_circuit_state``)."""
    loop = asyncio.get_running_loop()
    failures = 0
    started = -math.inf
    while stop is None or not stop.is_set():
        gap = started + min_gap_s - loop.time()
        if gap > 0:
            await _pause(gap, None, stop)  # let more wake-ups gather
            if stop is not None and stop.is_set():
                return
        if wake is not None:
            wake.clear()
        if breaker is not None:
            try:
                breaker.before_call()
            except CircuitOpen as exc:
                await _pause(max(exc.retry_after, 0.05), None, stop)
                continue
        started = loop.time()
        try:
            await step()
            failures = 0
            if breaker is not None:
                breaker.on_success()
        except asyncio.CancelledError:
            if breaker is not None:
                breaker.abandon()
            raise
        except Exception as exc:
            if breaker is not None:
                breaker.on_failure(exc)
            failures += 1
            log.warning("loop_failed", loop=name, error=type(exc).__name__)
            await _pause(min(0.2 * 2**failures, 5.0) * (0.5 + random.random()), None, stop)
            continue
        await _pause(interval_s, wake, stop)


async def _pause(seconds: float, wake: asyncio.Event | None, stop: asyncio.Event | None) -> None:
    """Sleep ``seconds``, or less when ``wake`` or ``stop`` is set."""
    events = [e for e in (wake, stop) if e is not None]
    if not events:
        await asyncio.sleep(seconds)
        return
    if len(events) == 1:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await events[0].wait()
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def stop_loops(
    loops: list[asyncio.Task[None]], stop: asyncio.Event, *, grace_s: float
) -> None:
    """Set ``stop``, let the loops finish the step in progress for ``grace_s`` at most, then
    cancel what is left."""
    stop.set()
    if not loops:
        return
    _, pending = await asyncio.wait(loops, timeout=grace_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
