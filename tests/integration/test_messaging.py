"""Messaging on the real RabbitMQ: confirmed publishing, redelivery after a consumer dies,
poison messages dead-lettered after the delivery limit, mandatory routing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aio_pika.exceptions import DeliveryError

from shared.messaging import Broker, Delivery, QueueSpec, Reject
from shared.messaging.broker import Outgoing
from shared.settings import CommonSettings
from tests.servers import unacked_messages


def _broker(settings: CommonSettings, prefix: str, name: str) -> Broker:
    rabbit = settings.rabbit.model_copy(update={"queue_prefix": prefix})
    return Broker(rabbit, name=name)


@pytest.fixture
async def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def broker(settings: CommonSettings, prefix: str) -> AsyncIterator[Broker]:
    b = _broker(settings, prefix, "test-a")
    await b.connect(attempts=3)
    yield b
    await b.close()


def _msg(key: str, body: bytes = b"{}") -> Outgoing:
    return Outgoing(key, body, str(uuid.uuid4()))


async def test_confirmed_publish_reaches_the_bound_queue(broker: Broker, prefix: str) -> None:
    spec = QueueSpec("confirm", (f"{prefix}.confirm",))
    await broker.declare(spec)
    msgs = [_msg(f"{prefix}.confirm", str(i).encode()) for i in range(50)]
    await broker.publish_many(msgs)  # returns only once every confirm arrived
    got = [await broker.get(broker.qname(spec)) for _ in range(50)]
    assert [g.body for g in got if g] == [str(i).encode() for i in range(50)]
    assert got[0] is not None
    assert got[0].message_id == msgs[0].message_id


async def test_unroutable_mandatory_publish_raises(broker: Broker, prefix: str) -> None:
    with pytest.raises(DeliveryError):
        await broker.publish(_msg(f"{prefix}.nobody.listens"))


async def test_unacked_message_is_redelivered_after_its_consumer_dies(
    settings: CommonSettings, broker: Broker, prefix: str
) -> None:
    spec = QueueSpec("redeliver", (f"{prefix}.redeliver",))
    received = asyncio.Event()

    async def hold_forever(_d: Delivery) -> None:
        received.set()
        await asyncio.Event().wait()

    doomed = _broker(settings, prefix, "doomed")
    await doomed.connect(attempts=3)
    await doomed.consume(spec, hold_forever, prefetch=1)
    await broker.publish(_msg(f"{prefix}.redeliver", b"job"))
    await asyncio.wait_for(received.wait(), 10)
    await doomed.close()  # the consumer dies without acknowledging

    second: asyncio.Queue[Delivery] = asyncio.Queue()

    async def take(d: Delivery) -> None:
        await second.put(d)

    survivor = _broker(settings, prefix, "survivor")
    await survivor.connect(attempts=3)
    try:
        await survivor.consume(spec, take, prefetch=1)
        d = await asyncio.wait_for(second.get(), 10)
        assert d.body == b"job"
        assert d.redelivered
        assert d.delivery_count >= 1
    finally:
        await survivor.close()


async def test_poison_message_is_dead_lettered_after_the_delivery_limit(
    broker: Broker, prefix: str
) -> None:
    spec = QueueSpec("poison", (f"{prefix}.poison",), delivery_limit=2)
    attempts: list[int] = []

    async def always_fails(d: Delivery) -> None:
        attempts.append(d.delivery_count)
        raise RuntimeError("boom")

    await broker.consume(spec, always_fails, prefetch=1)
    await broker.publish(_msg(f"{prefix}.poison", b"poison"))
    dead = await broker.get(f"{broker.qname(spec)}.dlq", timeout_s=15)
    assert dead is not None
    assert dead.body == b"poison"
    assert len(attempts) == 3  # the first delivery plus two retries (through delay queues)


async def test_reject_dead_letters_at_once(broker: Broker, prefix: str) -> None:
    spec = QueueSpec("reject", (f"{prefix}.reject",), delivery_limit=5)
    calls = 0

    async def refuse(_d: Delivery) -> None:
        nonlocal calls
        calls += 1
        raise Reject("not a valid event")

    await broker.consume(spec, refuse, prefetch=1)
    await broker.publish(_msg(f"{prefix}.reject", b"bad"))
    dead = await broker.get(f"{broker.qname(spec)}.dlq", timeout_s=10)
    assert dead is not None
    assert calls == 1


async def test_batch_consumer_isolates_a_poison_message(broker: Broker, prefix: str) -> None:
    spec = QueueSpec("batch", (f"{prefix}.batch",), delivery_limit=1)
    good: list[bytes] = []

    async def handle(batch: list[Delivery]) -> None:
        if any(d.body == b"bad" for d in batch):
            raise Reject("bad message in batch")
        good.extend(d.body for d in batch)

    await broker.declare(spec)
    await broker.publish_many([_msg(f"{prefix}.batch", b) for b in (b"1", b"bad", b"2", b"3")])
    await broker.consume_batches(spec, handle, max_wait_s=0.05)
    dead = await broker.get(f"{broker.qname(spec)}.dlq", timeout_s=10)
    assert dead is not None
    assert dead.body == b"bad"
    for _ in range(100):
        if len(good) == 3:
            break
        await asyncio.sleep(0.05)
    assert sorted(good) == [b"1", b"2", b"3"]


async def test_batch_consumer_waits_max_wait_s_for_a_trickle(broker: Broker, prefix: str) -> None:
    """Deliveries that trickle in within ``max_wait_s`` of the first go into one batch: one
    handler call and one ack for several events even at a steady, low rate."""
    spec = QueueSpec("trickle", (f"{prefix}.trickle",))
    sizes: list[int] = []

    async def handle(batch: list[Delivery]) -> None:
        sizes.append(len(batch))

    await broker.declare(spec)
    # a wait far longer than the trickle can take; the fifth message ends the batch
    await broker.consume_batches(spec, handle, max_wait_s=60.0, max_batch=5)
    for i in range(5):
        await broker.publish(_msg(f"{prefix}.trickle", str(i).encode()))
        await asyncio.sleep(0.02)
    async with asyncio.timeout(30):
        while sum(sizes) < 5:
            await asyncio.sleep(0.05)
    assert sizes == [5]


async def test_batch_consumer_acknowledges_whole_batches(
    broker: Broker, prefix: str, settings: CommonSettings
) -> None:
    """A settled batch is acknowledged (with one multiple ack): after the consumer's
    connection closes, nothing comes back to the queue."""
    spec = QueueSpec("acks", (f"{prefix}.acks",))
    seen: list[bytes] = []
    sizes: list[int] = []

    async def handle(batch: list[Delivery]) -> None:
        sizes.append(len(batch))
        seen.extend(d.body for d in batch)

    await broker.declare(spec)
    await broker.publish_many([_msg(f"{prefix}.acks", str(i).encode()) for i in range(40)])
    await broker.consume_batches(spec, handle, max_wait_s=0.05)
    for _ in range(100):
        if len(seen) == 40:
            break
        await asyncio.sleep(0.05)
    assert sorted(seen, key=int) == [str(i).encode() for i in range(40)]
    assert max(sizes) > 1  # batches, so the multiple ack was used
    async with asyncio.timeout(30):  # the last ack on its way
        while unacked_messages(settings.rabbit.vhost).get(f"unacked in {broker.qname(spec)}"):
            await asyncio.sleep(0.2)
    await broker.close()  # unacknowledged deliveries would return to the queue now
    other = _broker(settings, prefix, "test-b")
    await other.connect(attempts=3)
    try:
        queue = await other.declare(spec)
        declared = await queue.channel.declare_queue(queue.name, passive=True)
        assert declared.declaration_result.message_count == 0
    finally:
        await other.close()
