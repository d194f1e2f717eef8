"""RabbitMQ's connection broken under a consumer and under a starting service, for real: the
broker is reached through a TCP proxy (``tests.netfault``) that cuts the connections, or cuts
one in the middle of an AMQP frame. Outcomes, not stopwatches: nothing is lost, the consumer
is back, a start cut short is one failed attempt. The only time asserted is the reconnect
interval, from the settings: no sooner than it, and sooner than aio-pika's own default (5 s)
that the setting replaces."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from shared.messaging import Broker, Delivery, QueueSpec
from shared.messaging.broker import Outgoing
from shared.settings import CommonSettings, RabbitSettings
from tests.netfault import TcpProxy

AIO_PIKA_RECONNECT_INTERVAL_S = 5.0  # aio-pika's default, which the setting replaces
RECONNECT_INTERVAL_S = 0.5  # this test's setting: told apart from the default both ways


@pytest.fixture
async def proxy(settings: CommonSettings) -> AsyncIterator[TcpProxy]:
    async with TcpProxy.running(settings.rabbit.port) as proxy:
        yield proxy


def via(proxy: TcpProxy, settings: CommonSettings, prefix: str) -> RabbitSettings:
    return settings.rabbit.model_copy(
        update={
            "port": proxy.port,
            "queue_prefix": prefix,
            "reconnect_interval_s": RECONNECT_INTERVAL_S,
        }
    )


async def until(check: object, what: str, within_s: float = 30) -> None:
    """Wait for ``check()`` to be true; ``within_s`` only keeps a broken run from hanging."""
    assert callable(check)
    try:
        async with asyncio.timeout(within_s):
            while not check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {within_s:.0f}s: {what}") from None


@dataclass
class Consumed:
    """A consumer through the proxy, a publisher straight to the broker, one queue."""

    seen: list[bytes]
    publisher: Broker
    key: str

    async def publish(self, body: bytes) -> None:
        await self.publisher.publish(Outgoing(self.key, body, str(uuid.uuid4())))


@asynccontextmanager
async def consumed(settings: CommonSettings, proxy: TcpProxy) -> AsyncIterator[Consumed]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    spec = QueueSpec("q", (f"{prefix}.q",))
    consumer = Broker(via(proxy, settings, prefix), name=f"{prefix}-consumer")
    publisher = Broker(settings.rabbit.model_copy(update={"queue_prefix": prefix}), name=prefix)
    seen: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.body)

    await consumer.connect(attempts=3)
    await publisher.connect(attempts=3)
    try:
        await consumer.consume(spec, handler)
        yield Consumed(seen, publisher, f"{prefix}.q")
    finally:
        await consumer.close()
        await publisher.close()


async def test_a_consumer_reconnects_after_the_interval_and_misses_nothing(
    settings: CommonSettings, proxy: TcpProxy
) -> None:
    async with consumed(settings, proxy) as c:
        await c.publish(b"before")
        await until(lambda: b"before" in c.seen, "the message before the cut")
        connections = len(proxy.accepted)
        proxy.refuse(1)  # the first attempt to reconnect fails, as while RabbitMQ restarts
        assert proxy.cut() == 1
        await c.publish(b"during")  # queued meanwhile
        await until(lambda: b"during" in c.seen, "the message published while it was away")
        await c.publish(b"after")
        await until(lambda: b"after" in c.seen, "the message after it came back")
    assert c.seen == [b"before", b"during", b"after"]
    refused, back = proxy.accepted[connections : connections + 2]
    assert RECONNECT_INTERVAL_S - 0.01 <= back - refused < AIO_PIKA_RECONNECT_INTERVAL_S


async def test_a_delivery_cut_mid_frame_is_redelivered_whole(
    settings: CommonSettings, proxy: TcpProxy
) -> None:
    """The connection drops in the middle of a message's body frame: the consumer never sees
    half a message; the broker redelivers it once the consumer is back."""
    marker = uuid.uuid4().bytes  # inside the first body frame (frames carry up to 128 KiB)
    body = b"a" * 60_000 + marker + b"b" * 400_000
    async with consumed(settings, proxy) as c:
        cut = proxy.cut_on(marker, upstream=False, after=-len(marker) // 2)
        await c.publish(body)
        await until(cut.is_set, "the cut in the middle of the body")
        await until(lambda: len(c.seen) >= 1, "the redelivered message")
    assert c.seen == [body]
    assert len(proxy.accepted) >= 2  # it did come through a new connection


async def test_a_start_cut_short_by_the_broker_closes_its_connection_and_retries(
    settings: CommonSettings, proxy: TcpProxy
) -> None:
    """The broker going away between the connection and the declarations (a restart under a
    starting service) is one failed attempt: that connection is closed (its reconnect loop
    would otherwise keep the process alive after a failed start) and the next one is used."""
    broker = Broker(via(proxy, settings, f"t{uuid.uuid4().hex[:8]}"), name="test-cut-short")
    exchange = settings.rabbit.exchange.encode()
    cut = proxy.cut_on(exchange, after=-len(exchange) // 2)  # mid-frame: its declaration
    try:
        await broker.connect(attempts=3)
        assert cut.is_set()
        assert len(proxy.accepted) == 2
        # a reconnect loop left running on the first connection would be back by now
        await asyncio.sleep(3 * RECONNECT_INTERVAL_S)
        assert len(proxy.accepted) == 2
        assert proxy.open_links == 1
    finally:
        await broker.close()
