"""The outbox relay on the real PostgreSQL and RabbitMQ: a row is deleted only once the broker
confirmed its message; a failed publish leaves the whole batch; relays side by side never
publish a row twice (SKIP LOCKED); a relay stopped mid-batch leaves its rows to the next.
``publish_or_stage``: published at once without a row, or every event staged when the broker
refuses one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar

import pytest
from aio_pika.exceptions import DeliveryError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from shared.db.outbox import OutboxRelay, publish_or_stage
from shared.db.raw import raw_connection
from shared.events import Event
from shared.messaging import Broker, QueueSpec
from shared.messaging.broker import Outgoing
from shared.settings import CommonSettings, OutboxSettings
from tests.factories import own_database


@pytest.fixture(scope="module")
async def engine(settings: CommonSettings) -> AsyncIterator[AsyncEngine]:
    async with own_database(settings, "relay") as (_, sessions):
        yield sessions.kw["bind"]


@pytest.fixture
async def prefix(engine: AsyncEngine) -> str:
    async with raw_connection(engine) as conn:
        await conn.execute("TRUNCATE outbox")
    return f"t{uuid.uuid4().hex[:8]}"


class GatedBroker(Broker):
    """The real broker, whose ``publish_many`` waits for ``gate`` (after saying it started)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        self.started.set()
        await self.gate.wait()
        await super().publish_many(messages)


@pytest.fixture
async def broker(settings: CommonSettings, prefix: str) -> AsyncIterator[GatedBroker]:
    b = GatedBroker(settings.rabbit.model_copy(update={"queue_prefix": prefix}), name="relay")
    await b.connect(attempts=3)
    b.gate.set()
    yield b
    await b.close()


async def _stage(engine: AsyncEngine, keys: list[str]) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in keys]
    async with raw_connection(engine) as conn:
        await conn.executemany(
            "INSERT INTO outbox (message_id, routing_key, body) VALUES ($1, $2, $3)",
            [(i, k, str(n).encode()) for n, (i, k) in enumerate(zip(ids, keys, strict=True))],
        )
    return ids


async def _left(engine: AsyncEngine) -> list[uuid.UUID]:
    async with raw_connection(engine) as conn:
        return [r[0] for r in await conn.fetch("SELECT message_id FROM outbox ORDER BY id")]


async def _queue(broker: Broker, prefix: str) -> QueueSpec:
    spec = QueueSpec("relay", (f"{prefix}.relay",))
    await broker.declare(spec)
    return spec


async def _received(broker: Broker, spec: QueueSpec) -> list[str | None]:
    got = []
    while (d := await broker.get(broker.qname(spec), timeout_s=0.5)) is not None:
        got.append(d.message_id)
    return got


def _relay(engine: AsyncEngine, broker: Broker, batch: int = 500) -> OutboxRelay:
    return OutboxRelay(engine, broker, OutboxSettings(batch_size=batch, interval_s=0.05))


async def test_published_rows_are_deleted_in_order(
    engine: AsyncEngine, broker: GatedBroker, prefix: str
) -> None:
    spec = await _queue(broker, prefix)
    ids = await _stage(engine, [f"{prefix}.relay"] * 5)
    relay = _relay(engine, broker, batch=3)
    assert await relay.relay_once() == 3
    assert await _left(engine) == ids[3:]
    assert await relay.relay_once() == 2
    assert await relay.relay_once() == 0
    assert await _received(broker, spec) == [str(i) for i in ids]


async def test_a_failed_publish_keeps_the_whole_batch(
    engine: AsyncEngine, broker: GatedBroker, prefix: str
) -> None:
    await _queue(broker, prefix)
    # The second message is unroutable: the broker returns it (mandatory), the publish fails.
    ids = await _stage(engine, [f"{prefix}.relay", f"{prefix}.nobody", f"{prefix}.relay"])
    with pytest.raises(DeliveryError):
        await _relay(engine, broker).relay_once()
    assert await _left(engine) == ids


async def test_relays_side_by_side_publish_each_row_once(
    engine: AsyncEngine, broker: GatedBroker, settings: CommonSettings, prefix: str
) -> None:
    spec = await _queue(broker, prefix)
    ids = await _stage(engine, [f"{prefix}.relay"] * 6)
    broker.gate.clear()
    held = asyncio.create_task(_relay(engine, broker, batch=4).relay_once())
    await broker.started.wait()  # the first relay holds rows 1-4, unpublished
    other = Broker(settings.rabbit.model_copy(update={"queue_prefix": prefix}), name="relay-2")
    await other.connect(attempts=3)
    try:
        assert await _relay(engine, other, batch=4).relay_once() == 2  # skips the locked ones
    finally:
        await other.close()
    assert await _left(engine) == ids[:4]
    broker.gate.set()
    assert await held == 4
    assert await _left(engine) == []
    assert sorted(map(str, await _received(broker, spec))) == sorted(str(i) for i in ids)


async def test_a_relay_stopped_mid_batch_leaves_its_rows_to_the_next(
    engine: AsyncEngine, broker: GatedBroker, prefix: str
) -> None:
    spec = await _queue(broker, prefix)
    ids = await _stage(engine, [f"{prefix}.relay"] * 3)
    broker.gate.clear()
    relay = _relay(engine, broker)
    relay.start()
    await broker.started.wait()
    await relay.stop()  # cancelled while it waited for its confirms
    broker.gate.set()
    assert await _relay(engine, broker).relay_once() == 3  # at once: no lock left behind
    assert await _left(engine) == []
    assert await _received(broker, spec) == [str(i) for i in ids]


async def test_a_wake_up_relays_at_once(
    engine: AsyncEngine, broker: GatedBroker, prefix: str
) -> None:
    spec = await _queue(broker, prefix)
    every = OutboxSettings(batch_size=10, interval_s=30)
    relay = OutboxRelay(engine, broker, every)
    relay.start()
    try:
        await asyncio.sleep(0.2)  # the first pass found nothing; it now waits 30 s or a wake-up
        ids = await _stage(engine, [f"{prefix}.relay"] * 2)
        relay.wake()
        async with asyncio.timeout(every.interval_s / 2):  # the wake-up, not the interval
            while await _left(engine):
                await asyncio.sleep(0.02)
    finally:
        await relay.stop()
    assert await _received(broker, spec) == [str(i) for i in ids]


class Ping(Event):
    """An event routed under the test's own key."""

    type: ClassVar[str] = "test.ping"
    key: str

    @property
    def routing_key(self) -> str:
        return self.key


async def test_publish_or_stage_publishes_at_once_without_a_row(
    engine: AsyncEngine, broker: GatedBroker, prefix: str
) -> None:
    spec = await _queue(broker, prefix)
    events = [Ping(key=f"{prefix}.relay") for _ in range(3)]
    assert await publish_or_stage(broker, async_sessionmaker(engine), events) is True
    assert await _left(engine) == []
    got = await _received(broker, spec)
    assert sorted(map(str, got)) == sorted(str(e.event_id) for e in events)


async def test_publish_or_stage_stages_every_event_when_the_broker_refuses_one(
    engine: AsyncEngine, broker: GatedBroker, prefix: str
) -> None:
    await _queue(broker, prefix)
    # the second is unroutable: the broker returns it (mandatory) and the publish fails
    events = [Ping(key=f"{prefix}.{name}") for name in ("relay", "nobody", "relay")]
    assert await publish_or_stage(broker, async_sessionmaker(engine), events) is False
    assert await _left(engine) == [e.event_id for e in events]  # for the relay, in order
