"""Broker operations for operators and tests: queue depth, peeking at and re-driving dead
letters, taking one message. Mixed into ``Broker``; what a delivery looks like to handlers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from shared.errors import DependencyUnavailable
from shared.messaging.topology import RETRIES_HEADER
from shared.resilience import CircuitBreaker, CircuitOpen


@dataclass(frozen=True)
class Delivery:
    body: bytes
    message_id: str | None
    routing_key: str | None
    redelivered: bool
    delivery_count: int
    retries: int = 0  # times a consumer failed on it and sent it through a delay queue
    traceparent: str | None = None  # W3C trace context of the work it asks for (shared.tracing)


def int_header(message: AbstractIncomingMessage, name: str) -> int:
    value = message.headers.get(name, 0) if message.headers else 0
    try:
        return int(value) if isinstance(value, int | str) else 0
    except ValueError:
        return 0


def delivery_of(message: AbstractIncomingMessage) -> Delivery:
    return Delivery(
        body=message.body,
        message_id=message.message_id,
        routing_key=message.routing_key,
        redelivered=bool(message.redelivered),
        delivery_count=int_header(message, "x-delivery-count"),
        retries=int_header(message, RETRIES_HEADER),
        traceparent=_text_header(message, "traceparent"),
    )


def _text_header(message: AbstractIncomingMessage, name: str) -> str | None:
    value = message.headers.get(name) if message.headers else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value if isinstance(value, str) else None


class BrokerAdmin:
    """Needs the publishing channel and the connection of the broker it is mixed into."""

    _pub_channel: AbstractChannel | None
    breaker: CircuitBreaker

    @property
    def connection(self) -> AbstractRobustConnection:
        raise NotImplementedError

    async def get(self, queue_name: str, *, timeout_s: float = 5.0) -> Delivery | None:
        """Take one message from a queue (acknowledged), waiting up to ``timeout_s``.

        For dead-letter inspection and tests; services consume with ``consume``.
        """
        assert self._pub_channel is not None
        queue = await self._pub_channel.get_queue(queue_name, ensure=True)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            message = await queue.get(no_ack=False, fail=False)
            if message is not None:
                await message.ack()
                return delivery_of(message)
            if asyncio.get_running_loop().time() >= deadline:
                return None
            await asyncio.sleep(0.05)

    @contextlib.asynccontextmanager
    async def _admin_channel(self) -> AsyncIterator[AbstractChannel]:
        """A short-lived channel for admin operations; broker trouble becomes a 503 (at once
        while the broker's circuit is open)."""
        try:
            self.breaker.before_call()
        except CircuitOpen as exc:
            raise DependencyUnavailable(
                "the broker is unavailable", retry_after=max(exc.retry_after, 1.0)
            ) from exc
        try:
            channel = await self.connection.channel()
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            self.breaker.on_failure(exc)
            raise DependencyUnavailable("the broker is unavailable", retry_after=2) from exc
        self.breaker.on_success()
        try:
            yield channel
        except aio_pika.exceptions.AMQPError as exc:
            raise DependencyUnavailable("the broker is unavailable", retry_after=2) from exc
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def depth(self, queue_name: str) -> int:
        """Messages ready in a queue (a passive declare: never creates it)."""
        async with self._admin_channel() as channel:
            queue = await channel.declare_queue(queue_name, passive=True)
            return int(queue.declaration_result.message_count or 0)

    async def peek(self, queue_name: str, *, limit: int = 20) -> list[Delivery]:
        """Up to ``limit`` messages of a queue, left in it (taken unacknowledged, then
        returned). For dead-letter inspection."""
        taken: list[AbstractIncomingMessage] = []
        async with self._admin_channel() as channel:  # closing it returns what was taken
            queue = await channel.declare_queue(queue_name, passive=True)
            while len(taken) < limit:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                taken.append(message)
        return [delivery_of(m) for m in taken]

    async def redrive(self, dead_letter_queue: str, target_queue: str) -> Delivery | None:
        """Move the oldest dead letter back to the queue it came from (confirmed publish
        first, then ack: a crash in between leaves a duplicate, never a loss)."""
        assert self._pub_channel is not None
        async with self._admin_channel() as channel:
            queue = await channel.declare_queue(dead_letter_queue, passive=True)
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                return None
            await self._pub_channel.default_exchange.publish(
                aio_pika.Message(
                    message.body,
                    message_id=message.message_id,
                    type=message.type,
                    content_type=message.content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=target_queue,
                mandatory=True,
            )
            await message.ack()
            return delivery_of(message)
