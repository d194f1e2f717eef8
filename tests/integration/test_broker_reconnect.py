"""How soon a consumer is back once the broker returns (issue 6, recovery after a RabbitMQ
restart). The broker is reached through a TCP proxy that the test closes, keeps closed for a
moment (a reconnection attempt fails on it, as one does while RabbitMQ restarts) and reopens.
aio-pika then waits ``reconnect_interval`` before the next attempt; its default (5 s) was
most of the recovery the chaos suite measured after a RabbitMQ restart, and
``STRATUS_RABBIT__RECONNECT_INTERVAL_S`` (1 s) bounds it now."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiormq
import pytest

from shared.messaging import Broker, Delivery, QueueSpec
from shared.messaging.broker import Outgoing
from shared.settings import CommonSettings
from tests.netfault import TcpProxy


async def test_a_consumer_is_back_within_the_reconnect_interval(settings: CommonSettings) -> None:
    assert settings.rabbit.reconnect_interval_s == 1.0
    proxy = TcpProxy(settings.rabbit.port)
    await proxy.start()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    key = f"{prefix}.r"
    spec = QueueSpec("r", (key,))
    via_proxy = settings.rabbit.model_copy(update={"port": proxy.port, "queue_prefix": prefix})
    consumer = Broker(via_proxy, name="reconnect-consumer")
    publisher = Broker(settings.rabbit.model_copy(update={"queue_prefix": prefix}), name="rp")
    seen: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.body)

    await consumer.connect(attempts=3)
    await publisher.connect(attempts=3)
    try:
        await consumer.consume(spec, handler)
        await publisher.publish(Outgoing(key, b"before", str(uuid.uuid4())))
        deadline = time.monotonic() + 10
        while b"before" not in seen:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        await proxy.stop()  # the connection drops; the first attempt to reconnect is refused
        await asyncio.sleep(1.5)
        await proxy.start()  # the broker is back
        back = time.monotonic()
        await publisher.publish(Outgoing(key, b"after", str(uuid.uuid4())))
        while b"after" not in seen:
            # one interval (1 s) and the restore of the channel; aio-pika's default waited 5 s
            assert time.monotonic() - back < 3.0, "the consumer is not back yet"
            await asyncio.sleep(0.05)
    finally:
        await consumer.close()
        await publisher.close()
        await proxy.stop()


async def test_a_start_cut_short_by_the_broker_closes_its_connection_and_retries(
    settings: CommonSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker going away between the connection and the declarations (a restart under a
    starting service) is one failed attempt: that connection is closed (its reconnect loop
    would otherwise keep the process alive after a failed start) and the next one is used."""
    rabbit = settings.rabbit.model_copy(update={"queue_prefix": f"t{uuid.uuid4().hex[:8]}"})
    broker = Broker(rabbit, name="test-cut-short")
    opened: list[Any] = []
    real = Broker._declare_exchanges

    async def flaky(self: Broker, channel: Any) -> None:
        opened.append(self._conn)
        if len(opened) == 1:
            raise aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED - shutdown")
        await real(self, channel)

    monkeypatch.setattr(Broker, "_declare_exchanges", flaky)
    try:
        await broker.connect(attempts=3)
        assert len(opened) == 2
        assert opened[0] is not opened[1]
        assert opened[0].is_closed  # the first attempt's connection, reconnect loop and all
        assert not opened[1].is_closed
    finally:
        await broker.close()
