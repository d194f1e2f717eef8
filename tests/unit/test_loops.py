"""shared.loops.periodic: wake-ups, the minimum gap between woken steps, stopping."""

from __future__ import annotations

import asyncio
import itertools

from shared.loops import periodic
from shared.resilience import BreakerState, CircuitBreaker


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """A fresh read of the breaker's state, which the loop's task changes meanwhile (a bare
    ``breaker.state`` would stay narrowed by mypy after an earlier ``is`` check)."""
    return breaker.state


async def _run(min_gap_s: float, *, wakes: int, every_s: float) -> list[float]:
    """Steps of a loop woken ``wakes`` times, ``every_s`` apart (its interval is long)."""
    loop = asyncio.get_running_loop()
    steps: list[float] = []
    wake, stop = asyncio.Event(), asyncio.Event()

    async def step() -> None:
        steps.append(loop.time())

    task = asyncio.create_task(
        periodic("t", step, interval_s=60.0, wake=wake, stop=stop, min_gap_s=min_gap_s)
    )
    await asyncio.sleep(0.05)  # the first step runs at start
    for _ in range(wakes):
        wake.set()
        await asyncio.sleep(every_s)
    stop.set()
    wake.set()
    await asyncio.wait_for(task, 5)
    return steps


async def test_without_a_gap_each_wake_up_runs_a_step() -> None:
    steps = await _run(0.0, wakes=40, every_s=0.01)
    assert len(steps) >= 30  # one per wake-up, give or take a scheduling hiccup


async def test_a_gap_gathers_a_stream_of_wake_ups_into_few_steps() -> None:
    steps = await _run(0.25, wakes=40, every_s=0.01)  # 0.4 s of wake-ups
    assert 2 <= len(steps) <= 5
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    assert min(gaps) >= 0.24


async def test_an_isolated_wake_up_is_served_at_once_despite_the_gap() -> None:
    loop = asyncio.get_running_loop()
    steps: list[float] = []
    wake, stop = asyncio.Event(), asyncio.Event()

    async def step() -> None:
        steps.append(loop.time())

    task = asyncio.create_task(
        periodic("t", step, interval_s=60.0, wake=wake, stop=stop, min_gap_s=1.0)
    )
    await asyncio.sleep(1.2)  # idle for longer than the gap
    woken = loop.time()
    wake.set()
    await asyncio.sleep(0.3)
    stop.set()
    wake.set()
    await asyncio.wait_for(task, 5)
    assert len(steps) == 2
    assert steps[1] - woken < 0.25  # not held back by the gap


async def test_stop_during_the_gap_ends_the_loop_without_another_step() -> None:
    steps: list[int] = []
    wake, stop = asyncio.Event(), asyncio.Event()

    async def step() -> None:
        steps.append(1)

    task = asyncio.create_task(
        periodic("t", step, interval_s=60.0, wake=wake, stop=stop, min_gap_s=5.0)
    )
    await asyncio.sleep(0.05)
    wake.set()  # within the gap: the loop waits
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert steps == [1]


async def test_a_breaker_stops_the_steps_while_the_database_is_out() -> None:
    """Connectivity errors open the loop's breaker (no steps while open); after the reset
    timeout one step tries again, and its success closes it. Other errors are answers."""
    from shared.db.engine import is_connectivity_error

    breaker = CircuitBreaker(
        "postgres", failure_threshold=2, reset_timeout_s=3.0, is_failure=is_connectivity_error
    )
    loop = asyncio.get_running_loop()
    outage = {"on": True}
    calls: list[float] = []
    stop = asyncio.Event()

    async def step() -> None:
        calls.append(loop.time())
        if outage["on"]:
            raise ConnectionRefusedError("database down")

    task = asyncio.create_task(periodic("t", step, interval_s=0.01, stop=stop, breaker=breaker))
    for _ in range(200):
        if state_of(breaker) is BreakerState.OPEN:
            break
        await asyncio.sleep(0.01)
    assert state_of(breaker) is BreakerState.OPEN
    opened_after = len(calls)
    assert opened_after == 2  # the threshold
    await asyncio.sleep(2.0)  # the loop's own backoff alone would have tried again by now
    assert len(calls) == opened_after  # open: no step touched the database
    outage["on"] = False
    for _ in range(500):  # past the reset timeout: a trial step, then steps again
        if state_of(breaker) is BreakerState.CLOSED:
            break
        await asyncio.sleep(0.01)
    assert state_of(breaker) is BreakerState.CLOSED
    await asyncio.sleep(0.1)
    assert len(calls) > opened_after + 1
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_a_bad_query_does_not_open_the_breaker() -> None:
    from shared.db.engine import is_connectivity_error

    breaker = CircuitBreaker(
        "postgres", failure_threshold=1, reset_timeout_s=5, is_failure=is_connectivity_error
    )
    calls = 0
    stop = asyncio.Event()

    async def step() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug, not an outage")

    task = asyncio.create_task(periodic("t", step, interval_s=0.01, stop=stop, breaker=breaker))
    for _ in range(300):  # the loop's own backoff after a failure is 0.2-0.6 s
        if calls >= 2:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    # a threshold of 1: one counted failure opens it
    assert state_of(breaker) is BreakerState.CLOSED
    assert calls >= 2  # backing off, not stopped by the breaker
