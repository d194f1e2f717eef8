"""A paused consumer on the real RabbitMQ: while one consumer of a queue is paused (a worker
whose slots are all taken), the queue's messages go to the other consumer; resumed, it takes
them again. Deliveries it had before the pause are still handled."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from shared.messaging import Broker, Delivery, QueueSpec
from shared.messaging.broker import Outgoing
from shared.settings import CommonSettings


@pytest.fixture
async def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def brokers(settings: CommonSettings, prefix: str) -> AsyncIterator[tuple[Broker, Broker]]:
    rabbit = settings.rabbit.model_copy(update={"queue_prefix": prefix})
    pair = (Broker(rabbit, name="busy"), Broker(rabbit, name="idle"))
    for b in pair:
        await b.connect(attempts=3)
    yield pair
    for b in pair:
        await b.close()


async def test_a_paused_consumer_leaves_the_queue_to_the_others(
    brokers: tuple[Broker, Broker], prefix: str
) -> None:
    busy, idle = brokers
    spec = QueueSpec("pause", (f"{prefix}.pause",))
    got: dict[str, list[bytes]] = {"busy": [], "idle": []}
    arrived = asyncio.Event()

    def taker(name: str) -> Callable[[Delivery], Awaitable[None]]:
        async def take(d: Delivery) -> None:
            got[name].append(d.body)
            arrived.set()

        return take

    await busy.consume(spec, taker("busy"), prefetch=2)
    await idle.consume(spec, taker("idle"), prefetch=2)

    async def publish(n: int, tag: str) -> None:
        for i in range(n):
            out = Outgoing(f"{prefix}.pause", f"{tag}{i}".encode(), str(uuid.uuid4()))
            await busy.publish(out)

    async def settled(total: int) -> None:
        async with asyncio.timeout(10):
            while len(got["busy"]) + len(got["idle"]) < total:
                await asyncio.sleep(0.05)

    await busy.pause(spec)
    await busy.pause(spec)  # twice: still one consumer to resume
    await publish(6, "a")
    await settled(6)
    assert got["busy"] == []
    assert sorted(got["idle"]) == sorted(f"a{i}".encode() for i in range(6))

    await busy.resume(spec)
    await idle.pause(spec)
    await publish(4, "b")
    await settled(10)
    assert sorted(got["busy"]) == sorted(f"b{i}".encode() for i in range(4))
    assert len(got["idle"]) == 6

    await idle.resume(spec)
    await publish(20, "c")
    await settled(30)
    assert len(got["busy"]) > 4  # both take work again
    assert len(got["idle"]) > 6


async def test_nothing_resumes_after_stop_consuming(
    brokers: tuple[Broker, Broker], prefix: str
) -> None:
    busy, idle = brokers
    spec = QueueSpec("stopped", (f"{prefix}.stopped",))
    got: list[bytes] = []

    async def take(d: Delivery) -> None:
        got.append(d.body)

    await busy.consume(spec, take, prefetch=2)
    await busy.pause(spec)
    await busy.stop_consuming()
    await busy.resume(spec)  # a shutdown under way: it stays stopped
    await idle.declare(spec)
    await busy.publish(Outgoing(f"{prefix}.stopped", b"x", str(uuid.uuid4())))
    await asyncio.sleep(1.0)
    assert got == []
    assert await idle.get(idle.qname(spec)) is not None  # still queued


async def test_a_new_prefetch_bounds_the_deliveries_held_at_once(
    brokers: tuple[Broker, Broker], prefix: str
) -> None:
    """``set_prefetch`` changes how many unacknowledged deliveries the consumer holds at once:
    with handlers that do not finish, 2, then 5 more after the change (the consumer starts
    again with it, and the 2 held still count for the one that took them)."""
    busy, _ = brokers
    spec = QueueSpec("prefetch", (f"{prefix}.prefetch",))
    held: list[bytes] = []
    release = asyncio.Event()

    async def hold(d: Delivery) -> None:
        held.append(d.body)
        await release.wait()

    await busy.consume(spec, hold, prefetch=2)
    for i in range(8):
        await busy.publish(Outgoing(f"{prefix}.prefetch", b"%d" % i, str(uuid.uuid4())))

    async def holding(n: int) -> None:
        async with asyncio.timeout(10):
            while len(held) < n:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # and no more come
        assert len(held) == n

    await holding(2)
    await busy.set_prefetch(spec, 5)
    await holding(7)
    release.set()
    await holding(8)
