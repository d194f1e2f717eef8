"""A consumer outlives its connection: when the broker closes the connection under a batch
in progress (what a RabbitMQ restart does), the batch consumer keeps handling deliveries
on the restored channel, instead of dying on the failed ack and leaving its queue to fill
up unread."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

from shared.messaging import Broker, Delivery, QueueSpec
from shared.messaging.broker import Outgoing
from shared.settings import CommonSettings
from tests.databases import delete_vhost, new_vhost
from tools.provision import _rabbitmqctl


@pytest.fixture
def vhost(settings: CommonSettings) -> Iterator[str]:
    """A vhost of this test's own: its connections are the only ones closed."""
    name = f"{settings.rabbit.vhost}_rc"
    new_vhost(name)
    yield name
    delete_vhost(name)


def _broker(settings: CommonSettings, vhost: str, name: str) -> Broker:
    return Broker(settings.rabbit.model_copy(update={"vhost": vhost}), name=name)


async def _publish(broker: Broker, key: str, body: bytes) -> None:
    """Publish, again until the broker's connection is back."""
    deadline = time.monotonic() + 60
    while True:
        try:
            await broker.publish(Outgoing(key, body, str(uuid.uuid4())))
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_batch_consumer_survives_a_connection_closed_under_a_batch(
    settings: CommonSettings, vhost: str
) -> None:
    key = f"rc.{uuid.uuid4().hex[:8]}"
    spec = QueueSpec("recover", (key,))
    seen: list[bytes] = []
    entered, gate = asyncio.Event(), asyncio.Event()

    async def handler(batch: list[Delivery]) -> None:
        entered.set()
        await gate.wait()
        seen.extend(d.body for d in batch)

    consumer = _broker(settings, vhost, "rc-consumer")
    publisher = _broker(settings, vhost, "rc-publisher")
    await consumer.connect(attempts=3)
    await publisher.connect(attempts=3)
    try:
        await consumer.consume_batches(spec, handler)
        await _publish(publisher, key, b"first")
        await asyncio.wait_for(entered.wait(), 10)
        closed = await asyncio.to_thread(
            _rabbitmqctl, "close_all_connections", "-p", vhost, "consumer recovery test"
        )
        assert closed.returncode == 0, closed.stderr
        await asyncio.sleep(1.0)
        gate.set()  # the batch ends; its ack fails: the channel it came on is gone
        await _publish(publisher, key, b"second")
        deadline = time.monotonic() + 60
        while b"second" not in seen:
            assert time.monotonic() < deadline, f"the consumer stopped handling: {seen}"
            await asyncio.sleep(0.2)
        assert b"first" in seen
    finally:
        await consumer.close()
        await publisher.close()
