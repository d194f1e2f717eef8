"""aio-pika adapter: robust connection, confirmed persistent publishing, and one place that
decides each delivery's outcome (ack, dead-letter, or requeue counted by the broker)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from shared.errors import DependencyUnavailable
from shared.logging import get_logger
from shared.messaging.topology import DLX, DURABLE_QUEUES, QueueSpec
from shared.settings import RabbitSettings
from shared.telemetry import MESSAGES, PUBLISHED

log = get_logger(__name__)


class Reject(Exception):
    """Raised by a handler: the message can never succeed; dead-letter it now."""


@dataclass(frozen=True)
class Delivery:
    body: bytes
    message_id: str | None
    routing_key: str | None
    redelivered: bool
    delivery_count: int


@dataclass(frozen=True)
class Outgoing:
    routing_key: str
    body: bytes
    message_id: str
    type: str | None = None


Handler = Callable[[Delivery], Awaitable[None]]
BatchHandler = Callable[[list[Delivery]], Awaitable[None]]


def _delivery(message: AbstractIncomingMessage) -> Delivery:
    count = message.headers.get("x-delivery-count", 0) if message.headers else 0
    return Delivery(
        body=message.body,
        message_id=message.message_id,
        routing_key=message.routing_key,
        redelivered=bool(message.redelivered),
        delivery_count=int(count) if isinstance(count, int | str) else 0,
    )


class Broker:
    """One robust connection; a confirming channel for publishing, one channel per consumer."""

    def __init__(self, settings: RabbitSettings, *, name: str) -> None:
        self.settings = settings
        self.name = name
        self._conn: AbstractRobustConnection | None = None
        self._pub_channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._channels: list[AbstractChannel] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumers: list[tuple[AbstractQueue, str]] = []

    def qname(self, spec: QueueSpec) -> str:
        return f"{self.settings.queue_prefix}.{spec.name}"

    @property
    def exchange_name(self) -> str:
        return self.settings.exchange

    @property
    def dlx_name(self) -> str:
        return f"{self.settings.exchange}.{DLX}"

    async def connect(self, *, attempts: int | None = None, max_delay: float = 5.0) -> None:
        """Connect (retrying with backoff until the broker answers) and declare the topology."""
        delay = 0.2
        n = 0
        while True:
            n += 1
            try:
                self._conn = await aio_pika.connect_robust(
                    self.settings.url(),
                    client_properties={"connection_name": self.name},
                    timeout=5,
                )
                break
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
                if attempts is not None and n >= attempts:
                    raise
                log.warning("broker_connect_retry", error=type(exc).__name__, delay=delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, max_delay)
        self._pub_channel = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
        await self._declare_exchanges(self._pub_channel)
        for spec in DURABLE_QUEUES:
            await self.declare(spec)

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._conn is None:
            raise RuntimeError("broker not connected")
        return self._conn

    async def _declare_exchanges(self, channel: AbstractChannel) -> None:
        self._exchange = await channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await channel.declare_exchange(self.dlx_name, aio_pika.ExchangeType.DIRECT, durable=True)

    async def declare(
        self, spec: QueueSpec, channel: AbstractChannel | None = None
    ) -> AbstractQueue:
        ch = channel or self._pub_channel
        assert ch is not None
        name = self.qname(spec)
        if spec.durable:
            dlq = await ch.declare_queue(
                f"{name}.dlq", durable=True, arguments={"x-queue-type": "quorum"}
            )
            await dlq.bind(self.dlx_name, routing_key=name)
            args: dict[str, Any] = {
                "x-queue-type": "quorum",
                "x-delivery-limit": spec.delivery_limit or self.settings.delivery_limit,
                "x-dead-letter-exchange": self.dlx_name,
                "x-dead-letter-routing-key": name,
                **spec.arguments,
            }
            queue = await ch.declare_queue(name, durable=True, arguments=args)
        else:
            queue = await ch.declare_queue(
                name, durable=False, exclusive=True, auto_delete=True, arguments=spec.arguments
            )
        for key in spec.bindings:
            await queue.bind(self.exchange_name, routing_key=key)
        return queue

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, out: Outgoing) -> None:
        """Publish one persistent, mandatory message and wait for the broker's confirm."""
        if self._exchange is None:
            raise RuntimeError("broker not connected")
        message = aio_pika.Message(
            out.body,
            message_id=out.message_id,
            type=out.type,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self._exchange.publish(message, routing_key=out.routing_key, mandatory=True)
        PUBLISHED.labels(out.routing_key).inc()

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Pipelined confirmed publishing: all in flight at once, returns when all confirmed."""
        await asyncio.gather(*(self.publish(m) for m in messages))

    async def publish_event(self, event: Any) -> None:
        await self.publish(
            Outgoing(event.routing_key, event.to_bytes(), str(event.event_id), event.type)
        )

    # -- consuming -------------------------------------------------------------------------

    async def _consumer_channel(self, prefetch: int) -> AbstractChannel:
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        self._channels.append(channel)
        return channel

    async def consume(self, spec: QueueSpec, handler: Handler, *, prefetch: int = 16) -> None:
        """Run ``handler`` for each delivery, concurrently up to ``prefetch``."""
        channel = await self._consumer_channel(prefetch)
        queue = await self.declare(spec, channel)
        qname = self.qname(spec)

        async def on_message(message: AbstractIncomingMessage) -> None:
            await self._settle(qname, message, handler(_delivery(message)))

        self._consumers.append((queue, await queue.consume(on_message)))

    async def consume_batches(
        self,
        spec: QueueSpec,
        handler: BatchHandler,
        *,
        prefetch: int = 256,
        max_batch: int = 128,
        max_wait_s: float = 0.002,
    ) -> None:
        """Hand deliveries to ``handler`` in batches (one transaction per batch).

        If a batch fails, its messages are retried one by one so that a poison message is
        dead-lettered alone instead of taking its neighbours with it.
        """
        channel = await self._consumer_channel(prefetch)
        queue = await self.declare(spec, channel)
        qname = self.qname(spec)
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

        async def on_message(message: AbstractIncomingMessage) -> None:
            inbox.put_nowait(message)

        async def loop() -> None:
            while True:
                batch = [await inbox.get()]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max_wait_s):
                        while len(batch) < max_batch:
                            batch.append(await inbox.get())
                while len(batch) < max_batch and not inbox.empty():
                    batch.append(inbox.get_nowait())
                await self._settle_batch(qname, batch, handler)

        self._spawn(loop())
        self._consumers.append((queue, await queue.consume(on_message)))

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
                return _delivery(message)
            if asyncio.get_running_loop().time() >= deadline:
                return None
            await asyncio.sleep(0.05)

    @contextlib.asynccontextmanager
    async def _admin_channel(self) -> AsyncIterator[AbstractChannel]:
        """A short-lived channel for admin operations; broker trouble becomes a 503."""
        try:
            channel = await self.connection.channel()
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            raise DependencyUnavailable("the broker is unavailable", retry_after=2) from exc
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
        return [_delivery(m) for m in taken]

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
            return _delivery(message)

    async def stop_consuming(self) -> None:
        """Stop taking new deliveries (unacknowledged ones go back to their queues)."""
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        self._consumers.clear()

    async def _settle_batch(
        self, qname: str, batch: list[AbstractIncomingMessage], handler: BatchHandler
    ) -> None:
        try:
            await handler([_delivery(m) for m in batch])
        except Exception as exc:
            log.warning("batch_failed", queue=qname, size=len(batch), error=type(exc).__name__)
            for message in batch:
                await self._settle(qname, message, handler([_delivery(message)]))
            return
        for message in batch:
            await message.ack()
        MESSAGES.labels(qname, "ack").inc(len(batch))

    async def _settle(
        self, qname: str, message: AbstractIncomingMessage, work: Awaitable[None]
    ) -> None:
        """The one place that decides a delivery's outcome.

        success -> ack; ``Reject`` -> dead-letter now; anything else -> requeue after a short
        pause, counted by the quorum queue, which dead-letters past its delivery limit.
        """
        try:
            await work
        except Reject as exc:
            log.warning(
                "message_rejected", queue=qname, message_id=message.message_id, reason=str(exc)
            )
            await message.reject(requeue=False)
            MESSAGES.labels(qname, "dead_letter").inc()
            return
        except Exception as exc:
            count = _delivery(message).delivery_count
            log.warning(
                "message_failed",
                queue=qname,
                message_id=message.message_id,
                error=type(exc).__name__,
                delivery_count=count,
            )
            await asyncio.sleep(min(0.1 * 2**count, 2.0))  # never a hot requeue loop
            await message.nack(requeue=True)
            MESSAGES.labels(qname, "requeue").inc()
            return
        await message.ack()
        MESSAGES.labels(qname, "ack").inc()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def ping(self) -> None:
        if self._conn is None or self._conn.is_closed or self._pub_channel is None:
            raise ConnectionError("broker connection closed")
        if self._pub_channel.is_closed:
            raise ConnectionError("broker channel closed")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for channel in self._channels:
            with contextlib.suppress(Exception):
                await channel.close()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn = None


def new_message_id() -> str:
    return str(uuid.uuid4())
