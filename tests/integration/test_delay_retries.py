"""Retries through delay queues on the real RabbitMQ: a failing consumer's message waits in a
delay queue (its retry count in a header, not in memory) and comes back to that queue alone;
delayed publishing keeps the routing key and never arrives early."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from shared.messaging import Broker, Delivery, QueueSpec
from shared.messaging.broker import Outgoing
from shared.messaging.topology import delay_level
from shared.settings import DELAY_LEVELS_MS, CommonSettings
from shared.telemetry import MESSAGES

# RabbitMQ times a TTL on its own clock, in whole milliseconds: by ours, a delayed message
# may come back up to this much before its delay is over.
EARLY_S = 0.01


def _broker(settings: CommonSettings, prefix: str, name: str) -> Broker:
    return Broker(settings.rabbit.model_copy(update={"queue_prefix": prefix}), name=name)


@pytest.fixture
async def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def broker(settings: CommonSettings, prefix: str) -> AsyncIterator[Broker]:
    b = _broker(settings, prefix, "test-delay")
    await b.connect(attempts=3)
    yield b
    await b.close()


def _msg(key: str, body: bytes = b"{}", delay_ms: int | None = None) -> Outgoing:
    return Outgoing(key, body, str(uuid.uuid4()), delay_ms=delay_ms)


def test_delay_level_is_the_shortest_that_holds_the_delay() -> None:
    assert delay_level(1) == DELAY_LEVELS_MS[0]
    assert delay_level(DELAY_LEVELS_MS[2]) == DELAY_LEVELS_MS[2]
    assert delay_level(DELAY_LEVELS_MS[2] + 1) == DELAY_LEVELS_MS[3]
    assert delay_level(10**9) == DELAY_LEVELS_MS[-1]


async def test_transient_failures_retry_through_delay_queues(
    broker: Broker, prefix: str, settings: CommonSettings
) -> None:
    spec = QueueSpec("flaky", (f"{prefix}.flaky",), delivery_limit=5)
    seen: list[tuple[float, Delivery]] = []
    done = asyncio.Event()

    async def fails_twice(d: Delivery) -> None:
        seen.append((time.monotonic(), d))
        if len(seen) <= 2:
            raise ConnectionError("transient")
        done.set()

    await broker.consume(spec, fails_twice, prefetch=1)
    sent = _msg(f"{prefix}.flaky", b"work")
    await broker.publish(sent)
    await asyncio.wait_for(done.wait(), 20)
    assert [d.retries for _, d in seen] == [0, 1, 2]  # counted in a header by the broker
    assert [d.delivery_count for _, d in seen] == [0, 0, 0]  # never requeued
    assert {d.message_id for _, d in seen} == {sent.message_id}
    assert {d.body for _, d in seen} == {b"work"}
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
    rabbit = settings.rabbit  # the n-th retry waits initial * multiplier**(n-1), ± jitter
    shortest = [
        rabbit.retry_initial_s * rabbit.retry_multiplier**n * (1 - rabbit.retry_jitter)
        for n in (0, 1)
    ]
    assert gaps[0] >= shortest[0] - EARLY_S, gaps
    assert gaps[1] >= shortest[1] - EARLY_S, gaps
    await asyncio.sleep(0.3)
    assert await broker.depth(broker.qname(spec)) == 0
    assert await broker.depth(f"{broker.qname(spec)}.dlq") == 0


async def test_retry_count_survives_the_consumer_process(
    settings: CommonSettings, broker: Broker, prefix: str
) -> None:
    spec = QueueSpec("survive", (f"{prefix}.survive",), delivery_limit=5)
    failed = asyncio.Event()

    async def fail(_d: Delivery) -> None:
        failed.set()
        raise TimeoutError("transient")

    first = _broker(settings, prefix, "first")
    await first.connect(attempts=3)
    await first.consume(spec, fail, prefetch=1)
    await broker.publish(_msg(f"{prefix}.survive", b"x"))
    await asyncio.wait_for(failed.wait(), 10)
    retried = MESSAGES.labels(first.qname(spec), "retry")
    for _ in range(100):  # republished to a delay queue and acknowledged
        if retried._value.get() >= 1:
            break
        await asyncio.sleep(0.02)
    await first.close()  # the message now waits in a delay queue, the process is gone

    got: asyncio.Queue[Delivery] = asyncio.Queue()

    async def take(d: Delivery) -> None:
        await got.put(d)

    await broker.consume(spec, take, prefetch=1)
    d = await asyncio.wait_for(got.get(), 10)
    assert d.body == b"x"
    assert d.retries == 1
    assert d.delivery_count == 0  # it came back through the delay queue, not a requeue


async def test_a_retry_comes_back_to_the_failing_queue_alone(broker: Broker, prefix: str) -> None:
    key = f"{prefix}.shared"
    flaky = QueueSpec("a", (key,), delivery_limit=3)
    steady = QueueSpec("b", (key,), delivery_limit=3)
    a_calls: list[int] = []
    b_calls: list[int] = []
    a_done = asyncio.Event()

    async def a(d: Delivery) -> None:
        a_calls.append(d.retries)
        if d.retries == 0:
            raise ConnectionError("transient")
        a_done.set()

    async def b(d: Delivery) -> None:
        b_calls.append(d.retries)

    await broker.consume(flaky, a, prefetch=1)
    await broker.consume(steady, b, prefetch=1)
    await broker.publish(_msg(key))
    await asyncio.wait_for(a_done.wait(), 10)
    await asyncio.sleep(0.5)
    assert a_calls == [0, 1]
    assert b_calls == [0]  # the other subscriber of the key got it once


async def test_poison_message_carries_its_retry_count_into_the_dead_letter_queue(
    broker: Broker, prefix: str
) -> None:
    spec = QueueSpec("poison2", (f"{prefix}.poison2",), delivery_limit=1)

    async def always_fails(_d: Delivery) -> None:
        raise RuntimeError("boom")

    await broker.consume(spec, always_fails, prefetch=1)
    await broker.publish(_msg(f"{prefix}.poison2", b"poison"))
    dead = await broker.get(f"{broker.qname(spec)}.dlq", timeout_s=15)
    assert dead is not None
    assert dead.body == b"poison"
    assert dead.retries == 1


async def test_delayed_publish_keeps_its_key_and_never_arrives_early(
    broker: Broker, prefix: str
) -> None:
    spec = QueueSpec("later", (f"{prefix}.later",))
    got: asyncio.Queue[tuple[float, Delivery]] = asyncio.Queue()

    async def take(d: Delivery) -> None:
        await got.put((time.monotonic(), d))

    await broker.consume(spec, take, prefetch=4)
    slow_ms, fast_ms = 1500, 300
    t0 = time.monotonic()
    # the longer delay first: a shorter one in another level does not wait behind it
    await broker.publish(_msg(f"{prefix}.later", b"slow", delay_ms=slow_ms))
    await broker.publish(_msg(f"{prefix}.later", b"fast", delay_ms=fast_ms))
    first_at, first = await asyncio.wait_for(got.get(), 10)
    second_at, second = await asyncio.wait_for(got.get(), 10)
    assert (first.body, second.body) == (b"fast", b"slow")
    assert first.routing_key == second.routing_key == f"{prefix}.later"
    assert first_at - t0 >= fast_ms / 1000 - EARLY_S
    assert second_at - t0 >= slow_ms / 1000 - EARLY_S
    # held by its level, not by a longer one
    longer = min(level for level in DELAY_LEVELS_MS if level > delay_level(slow_ms))
    assert second_at - t0 < longer / 1000


async def test_retry_backoff_and_delay_levels_come_from_the_settings(
    settings: CommonSettings, prefix: str
) -> None:
    """``STRATUS_RABBIT__RETRY_*`` and ``__DELAY_LEVELS_MS``: the broker declares the levels
    configured and a consumer's retry waits the configured backoff."""
    rabbit = settings.rabbit.model_copy(
        update={
            "queue_prefix": prefix,
            "retry_initial_s": 1.5,
            "retry_jitter": 0.0,
            "delay_levels_ms": (300, 1_500),
        }
    )
    b = Broker(rabbit, name="test-levels")
    await b.connect(attempts=3)
    try:
        for level in (300, 1_500):
            assert await b.depth(b.delay_queue_name(level)) == 0  # declared
        spec = QueueSpec("slow", (f"{prefix}.slow",), delivery_limit=3)
        seen: list[float] = []
        done = asyncio.Event()

        async def fails_once(_d: Delivery) -> None:
            seen.append(time.monotonic())
            if len(seen) == 1:
                raise ConnectionError("transient")
            done.set()

        await b.consume(spec, fails_once, prefetch=1)
        await b.publish(_msg(f"{prefix}.slow"))
        await asyncio.wait_for(done.wait(), 20)
        # the configured backoff (no jitter), not the default 0.5 s
        assert seen[1] - seen[0] >= rabbit.retry_initial_s - EARLY_S
    finally:
        await b.close()
