"""aio-pika adapter: robust connection, confirmed persistent publishing behind a circuit
breaker, and one place that decides each delivery's outcome (ack, dead-letter, or a retry
later through a delay queue)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from shared.logging import get_logger
from shared.messaging.admin import BrokerAdmin, delivery_of, int_header
from shared.messaging.admin import Delivery as Delivery  # re-exported
from shared.messaging.topology import (
    DELAY,
    DELAY_HEADER,
    DLX,
    DURABLE_QUEUES,
    RETRIES_HEADER,
    QueueSpec,
    delay_level,
    retry_routing_key,
)
from shared.resilience import CircuitBreaker
from shared.settings import RabbitSettings
from shared.startup import note_ready, note_waiting
from shared.telemetry import MESSAGES, PUBLISHED, watch_breaker

log = get_logger(__name__)

PUBLISH_TIMEOUT_S = 5.0


class Reject(Exception):
    """Raised by a handler: the message can never succeed; dead-letter it now."""


@dataclass(frozen=True)
class Outgoing:
    routing_key: str
    body: bytes
    message_id: str
    type: str | None = None
    delay_ms: int | None = None  # published through a delay queue, routed when it ends
    headers: dict[str, Any] | None = None


Handler = Callable[[Delivery], Awaitable[None]]
BatchHandler = Callable[[list[Delivery]], Awaitable[None]]


def _is_broker_failure(exc: BaseException) -> bool:
    """Connection trouble counts against the breaker; a refused message (unroutable) does
    not: the broker answered."""
    if isinstance(exc, aio_pika.exceptions.DeliveryError | aio_pika.exceptions.PublishError):
        return False
    return isinstance(exc, TimeoutError | OSError | RuntimeError | aio_pika.exceptions.AMQPError)


class Broker(BrokerAdmin):
    """One robust connection; a confirming channel for publishing, one channel per consumer."""

    def __init__(self, settings: RabbitSettings, *, name: str) -> None:
        self.settings = settings
        self._consumer_retry = settings.consumer_retry()
        self.name = name
        self._conn: AbstractRobustConnection | None = None
        self._pub_channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._delay_exchange: AbstractExchange | None = None
        # one breaker per process for RabbitMQ: publishing fails fast while it is open
        self.breaker = watch_breaker(
            CircuitBreaker(
                "rabbitmq", failure_threshold=3, reset_timeout_s=2.0, is_failure=_is_broker_failure
            )
        )
        self._channels: list[AbstractChannel] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._limits: dict[str, int] = {}  # retries allowed per durable queue

    def qname(self, spec: QueueSpec) -> str:
        return f"{self.settings.queue_prefix}.{spec.name}"

    @property
    def exchange_name(self) -> str:
        return self.settings.exchange

    @property
    def dlx_name(self) -> str:
        return f"{self.settings.exchange}.{DLX}"

    @property
    def delay_exchange_name(self) -> str:
        return f"{self.settings.exchange}.{DELAY}"

    def delay_queue_name(self, level_ms: int) -> str:
        # "delayed", not "delay": a broker may hold quorum queues named "delay.<n>ms", and
        # declaring a name that exists with another queue type fails (PRECONDITION_FAILED)
        return f"{self.settings.queue_prefix}.{DELAY}ed.{level_ms}ms"

    async def connect(self, *, attempts: int | None = None, max_delay: float = 5.0) -> None:
        """Connect (retrying with backoff until the broker answers) and declare the topology.

        A broker that goes away between the connection and the end of the declarations (a
        restart under a starting service) is one more failed attempt: the half-set-up
        connection is closed before the next: left open, its reconnect loop would outlive
        the failed start (aio-pika's swallows the cancellation at shutdown) and keep the
        process alive to its supervisor but serving nothing."""
        delay = 0.2
        n = 0
        while True:
            n += 1
            try:
                self._conn = await aio_pika.connect_robust(
                    self.settings.url(),
                    client_properties={"connection_name": self.name},
                    timeout=5,
                    reconnect_interval=self.settings.reconnect_interval_s,
                )
                await self._set_up(self._conn)
                break
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
                await self._discard_connection()
                if attempts is not None and n >= attempts:
                    raise
                note_waiting("rabbitmq")
                log.warning("broker_connect_retry", error=type(exc).__name__, delay=delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, max_delay)
            except BaseException:
                await self._discard_connection()
                raise
        note_ready("rabbitmq")

    async def _set_up(self, conn: AbstractRobustConnection) -> None:
        self._pub_channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        await self._declare_exchanges(self._pub_channel)
        await self._declare_delay_queues(self._pub_channel)
        for spec in DURABLE_QUEUES:
            await self.declare(spec)

    async def _discard_connection(self) -> None:
        conn, self._conn, self._pub_channel = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.close())

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
        self._delay_exchange = await channel.declare_exchange(
            self.delay_exchange_name, aio_pika.ExchangeType.HEADERS, durable=True
        )

    async def _declare_delay_queues(self, channel: AbstractChannel) -> None:
        """One durable classic queue per backoff level with a fixed TTL; expired messages
        dead-letter into the events exchange under their own routing key. A message reaches
        its level through the headers exchange, so its routing key is kept. Classic, not
        quorum: a quorum queue per level (and per test prefix) loads the broker with Raft
        logs for a waiting room; the price is at-most-once dead-lettering (a message that
        expires as the node crashes may be lost), which the callers tolerate (see
        docs/ARCHITECTURE.md, Retries)."""
        for level in self.settings.delay_levels_ms:
            name = self.delay_queue_name(level)
            queue = await channel.declare_queue(
                name,
                durable=True,
                arguments={
                    "x-queue-type": "classic",
                    "x-message-ttl": level,
                    "x-dead-letter-exchange": self.exchange_name,
                },
            )
            await queue.bind(
                self.delay_exchange_name, arguments={"x-match": "all", DELAY_HEADER: name}
            )

    async def declare(
        self, spec: QueueSpec, channel: AbstractChannel | None = None
    ) -> AbstractQueue:
        ch = channel or self._pub_channel
        assert ch is not None
        name = self.qname(spec)
        if spec.durable:
            self._limits[name] = spec.delivery_limit or self.settings.delivery_limit
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
        if spec.durable:  # retried messages come back to this queue alone
            await queue.bind(self.exchange_name, routing_key=retry_routing_key(name))
        return queue

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, out: Outgoing) -> None:
        """Publish one persistent, mandatory message and wait for the broker's confirm,
        through the breaker (``CircuitOpen`` at once while RabbitMQ is known to be away).
        With ``delay_ms`` it goes to the delay queue of its level and is routed by its key
        when the delay ends."""
        await self.breaker.call(lambda: self._publish(out))
        PUBLISHED.labels(out.routing_key).inc()

    async def _publish(self, out: Outgoing) -> None:
        if self._exchange is None or self._delay_exchange is None:
            raise RuntimeError("broker not connected")
        headers = dict(out.headers or {})
        expiration = None
        exchange = self._exchange
        if out.delay_ms is not None:
            level = delay_level(out.delay_ms, self.settings.delay_levels_ms)
            headers[DELAY_HEADER] = self.delay_queue_name(level)
            expiration = timedelta(milliseconds=max(min(out.delay_ms, level), 1))
            exchange = self._delay_exchange
        message = aio_pika.Message(
            out.body,
            message_id=out.message_id,
            type=out.type,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers or None,
            expiration=expiration,
        )
        await exchange.publish(
            message, routing_key=out.routing_key, mandatory=True, timeout=PUBLISH_TIMEOUT_S
        )

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Pipelined confirmed publishing: all in flight at once, returns when all confirmed."""
        await asyncio.gather(*(self.publish(m) for m in messages))

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
            await self._settle(qname, message, handler(delivery_of(message)))

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
                try:
                    await self._settle_batch(qname, batch, handler)
                except Exception as exc:
                    # The channel closed under the batch (a broker restart): its deliveries
                    # come back on the restored channel. The loop must live on, or the
                    # restored consumer fills ``inbox`` and nothing is handled any more.
                    log.warning(
                        "batch_not_settled", queue=qname, size=len(batch), error=type(exc).__name__
                    )

        self._spawn(loop())
        self._consumers.append((queue, await queue.consume(on_message)))

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
            await handler([delivery_of(m) for m in batch])
        except Exception as exc:
            log.warning("batch_failed", queue=qname, size=len(batch), error=type(exc).__name__)
            for message in batch:
                await self._settle(qname, message, handler([delivery_of(message)]))
            return
        await _ack_all(batch)
        MESSAGES.labels(qname, "ack").inc(len(batch))

    async def _settle(
        self, qname: str, message: AbstractIncomingMessage, work: Awaitable[None]
    ) -> None:
        """The one place that decides a delivery's outcome.

        success -> ack; ``Reject`` -> dead-letter now; anything else -> a retry later: the
        message goes to a delay queue with its retry count (a header) incremented, and is
        acknowledged; past the queue's limit it is dead-lettered. The quorum queue's own
        delivery limit still catches a consumer that dies on a message (redeliveries).
        """
        try:
            await work
        except Reject as exc:
            log.warning(
                "message_rejected", queue=qname, message_id=message.message_id, reason=str(exc)
            )
            await self._dead_letter(qname, message)
            return
        except Exception as exc:
            await self._retry_later(qname, message, exc)
            return
        await message.ack()
        MESSAGES.labels(qname, "ack").inc()

    async def _dead_letter(self, qname: str, message: AbstractIncomingMessage) -> None:
        await message.reject(requeue=False)
        MESSAGES.labels(qname, "dead_letter").inc()

    async def _retry_later(
        self, qname: str, message: AbstractIncomingMessage, exc: Exception
    ) -> None:
        """Republish through a delay queue (confirmed), then ack: a crash in between leaves
        a duplicate, never a loss. Broker trouble falls back to a paused requeue."""
        retries = int_header(message, RETRIES_HEADER) + 1
        limit = self._limits.get(qname, self.settings.delivery_limit)
        log.warning(
            "message_failed",
            queue=qname,
            message_id=message.message_id,
            error=type(exc).__name__,
            retries=retries,
        )
        if retries > limit:
            await self._dead_letter(qname, message)
            return
        delay_ms = round(self._consumer_retry.delay(retries) * 1000)
        headers = {
            k: v
            for k, v in (message.headers or {}).items()
            if k not in ("x-death", "x-delivery-count", DELAY_HEADER)
        }
        headers[RETRIES_HEADER] = retries
        try:
            await self.publish(
                Outgoing(
                    retry_routing_key(qname),
                    message.body,
                    message.message_id or new_message_id(),
                    message.type,
                    delay_ms=delay_ms,
                    headers=headers,
                )
            )
        except Exception as publish_exc:
            log.warning("retry_publish_failed", queue=qname, error=type(publish_exc).__name__)
            count = int_header(message, "x-delivery-count")
            await asyncio.sleep(min(0.1 * 2**count, 2.0))  # never a hot requeue loop
            await message.nack(requeue=True)
            MESSAGES.labels(qname, "requeue").inc()
            return
        await message.ack()
        MESSAGES.labels(qname, "retry").inc()

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


async def _ack_all(batch: list[AbstractIncomingMessage]) -> None:
    """Acknowledge a settled batch: one ``basic.ack`` with ``multiple`` for the highest
    delivery tag when the whole batch came on one channel, else one ack per message.

    Safe because a batch consumer owns its channel and settles its batches one after the
    other: every unacknowledged delivery up to the batch's highest tag belongs to this batch
    (earlier batches are settled; later deliveries have higher tags). After a reconnect the
    channel differs, so a batch straddling one is acknowledged message by message."""
    last = max(batch, key=lambda m: m.delivery_tag or 0)
    if len(batch) > 1 and all(m.channel is last.channel for m in batch):
        await last.ack(multiple=True)
        return
    for message in batch:
        await message.ack()
