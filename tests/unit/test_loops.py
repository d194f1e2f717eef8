"""shared.loops.periodic: wake-ups, the minimum gap between woken steps, stopping. Bounds
come from the settings under test (lower bounds on time, counts from the time measured),
never from how fast the machine is."""

from __future__ import annotations

import asyncio
import itertools
import math

from shared.loops import periodic
from shared.resilience import BreakerState, CircuitBreaker


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """A fresh read of the breaker's state, which the loop's task changes meanwhile (a bare
    ``breaker.state`` would stay narrowed by mypy after an earlier ``is`` check)."""
    return breaker.state


async def test_without_a_gap_each_wake_up_runs_a_step() -> None:
    steps = 0
    stepped = asyncio.Event()
    wake, stop = asyncio.Event(), asyncio.Event()

    async def step() -> None:
        nonlocal steps
        steps += 1
        stepped.set()

    task = asyncio.create_task(periodic("t", step, interval_s=60.0, wake=wake, stop=stop))
    for _ in range(10):
        await stepped.wait()  # the step before this wake-up is over
        stepped.clear()
        wake.set()
    await stepped.wait()
    stop.set()
    wake.set()
    await asyncio.wait_for(task, 5)
    assert steps == 1 + 10  # the first at start, then one per wake-up


async def test_a_gap_gathers_a_stream_of_wake_ups_into_few_steps() -> None:
    min_gap_s = 0.25
    loop = asyncio.get_running_loop()
    steps: list[float] = []
    wake, stop = asyncio.Event(), asyncio.Event()

    async def step() -> None:
        steps.append(loop.time())

    task = asyncio.create_task(
        periodic("t", step, interval_s=60.0, wake=wake, stop=stop, min_gap_s=min_gap_s)
    )
    while not steps:  # the first step runs at start
        await asyncio.sleep(0.01)
    for _ in range(40):  # a stream of wake-ups, at least 0.4 s long
        wake.set()
        await asyncio.sleep(0.01)
    streamed = loop.time() - steps[0]
    stop.set()
    wake.set()
    await asyncio.wait_for(task, 5)
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    assert len(steps) >= 2  # the stream outlasts one gap: it was served
    assert min(gaps) >= min_gap_s - 0.001  # never two steps within the gap
    # one step per gap at most, however long the stream took on a busy machine
    assert len(steps) <= 1 + math.ceil(streamed / min_gap_s), (len(steps), streamed)


async def test_an_isolated_wake_up_is_served_at_once_despite_the_gap() -> None:
    min_gap_s = 1.0
    loop = asyncio.get_running_loop()
    steps: list[float] = []
    wake, stop = asyncio.Event(), asyncio.Event()

    async def step() -> None:
        steps.append(loop.time())

    task = asyncio.create_task(
        periodic("t", step, interval_s=60.0, wake=wake, stop=stop, min_gap_s=min_gap_s)
    )
    await asyncio.sleep(min_gap_s * 1.1)  # idle for longer than the gap
    woken = loop.time()
    wake.set()
    while len(steps) < 2:
        await asyncio.sleep(0.01)
    stop.set()
    wake.set()
    await asyncio.wait_for(task, 5)
    assert len(steps) == 2
    assert steps[1] - woken < min_gap_s  # held back, it would wait a whole gap


async def test_stop_during_the_gap_ends_the_loop_without_another_step() -> None:
    steps: list[int] = []
    wake, stop = asyncio.Event(), asyncio.Event()

    async def step() -> None:
        steps.append(1)

    task = asyncio.create_task(
        periodic("t", step, interval_s=60.0, wake=wake, stop=stop, min_gap_s=3600.0)
    )
    while not steps:
        await asyncio.sleep(0.01)
    wake.set()  # within the gap: the loop waits
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert steps == [1]


async def test_a_breaker_stops_the_steps_while_the_database_is_out() -> None:
    """Connectivity errors open the loop's breaker (no steps while open); after the reset
    timeout one step tries again, and its success closes it. Other errors are answers."""
    from shared.db.engine import is_connectivity_error

    # longer than the loop's own backoff after two failures (at most 0.2 * 2**2 * 1.5 s)
    reset_timeout_s = 2.0
    breaker = CircuitBreaker(
        "postgres",
        failure_threshold=2,
        reset_timeout_s=reset_timeout_s,
        is_failure=is_connectivity_error,
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
    while state_of(breaker) is not BreakerState.OPEN:
        await asyncio.sleep(0.01)
    assert len(calls) == 2  # the threshold
    outage["on"] = False
    while state_of(breaker) is not BreakerState.CLOSED:  # a trial step, then steps again
        await asyncio.sleep(0.01)
    while len(calls) < 4:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    # open: no step touched the database until the reset timeout had passed
    assert calls[2] - calls[1] >= reset_timeout_s - 0.001, calls


async def test_a_bad_query_does_not_open_the_breaker() -> None:
    from shared.db.engine import is_connectivity_error

    reset_timeout_s = 60.0
    breaker = CircuitBreaker(
        "postgres",
        failure_threshold=1,
        reset_timeout_s=reset_timeout_s,
        is_failure=is_connectivity_error,
    )
    calls = 0
    stop = asyncio.Event()

    async def step() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug, not an outage")

    async def second_call() -> None:
        while calls < 2:
            await asyncio.sleep(0.01)

    task = asyncio.create_task(periodic("t", step, interval_s=0.01, stop=stop, breaker=breaker))
    # the loop's own backoff (under a second) retries it; an open breaker would hold it back
    # for the whole reset timeout
    await asyncio.wait_for(second_call(), reset_timeout_s / 2)
    stop.set()
    await asyncio.wait_for(task, 5)
    # a threshold of 1: one counted failure opens it
    assert state_of(breaker) is BreakerState.CLOSED
