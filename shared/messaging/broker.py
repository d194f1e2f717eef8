"""aio-pika adapter: robust connection, the topology declared, confirmed persistent
publishing behind a circuit breaker, and consumers whose deliveries ``outcome.Settler``
settles (ack, dead-letter, or a retry later through a delay queue)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Sequence
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
from shared.messaging.admin import BrokerAdmin, delivery_of
from shared.messaging.admin import Delivery as Delivery  # re-exported
from shared.messaging.outcome import BatchHandler, Handler, Settler
from shared.messaging.outcome import Outgoing as Outgoing  # re-exported
from shared.messaging.outcome import Reject as Reject  # re-exported
from shared.messaging.topology import (
    DELAY,
    DELAY_HEADER,
    DLX,
    DURABLE_QUEUES,
    QueueSpec,
    delay_level,
    retry_routing_key,
)
from shared.resilience import CircuitBreaker
from shared.settings import RabbitSettings
from shared.startup import note_ready, note_waiting
from shared.telemetry import PUBLISHED, watch_breaker

log = get_logger(__name__)

PUBLISH_TIMEOUT_S = 5.0


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
        # each queue given to ``consume``: its queue and callback, for ``resume``
        self._callbacks: dict[str, tuple[AbstractQueue, Any]] = {}
        self._paused: set[str] = set()
        self._stopped = False  # ``stop_consuming``: nothing resumes any more
        self._settler = Settler(self.publish, settings.consumer_retry(), settings.delivery_limit)

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
            self._settler.limits[name] = spec.delivery_limit or self.settings.delivery_limit
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
            await self._settler.settle(qname, message, handler(delivery_of(message)))

        self._callbacks[qname] = (queue, on_message)
        self._consumers.append((queue, await queue.consume(on_message)))

    async def set_prefetch(self, spec: QueueSpec, prefetch: int) -> None:
        """Take up to ``prefetch`` unacknowledged deliveries at once from ``spec``'s queue
        (``consume``'s) from now on, also after a reconnection. RabbitMQ fixes a consumer's
        prefetch when it starts, so the consumer is started again with the new one (before
        the old one is cancelled: no gap); deliveries already made are handled as usual. A
        paused consumer takes it when resumed."""
        qname = self.qname(spec)
        queue, on_message = self._callbacks[qname]
        await queue.channel.set_qos(prefetch_count=prefetch)
        if qname in self._paused or self._stopped:
            return
        old = [c for c in self._consumers if c[0] is queue]
        self._consumers.append((queue, await queue.consume(on_message, timeout=10.0)))
        for entry in old:
            self._consumers.remove(entry)
            with contextlib.suppress(Exception):  # a closed channel delivers nothing anyway
                await queue.cancel(entry[1])

    async def pause(self, spec: QueueSpec) -> None:
        """Take no more deliveries from ``spec``'s queue (``consume``'s) until ``resume``:
        its messages stay there for the other consumers. Deliveries already made are
        handled as usual. A paused consumer is not restored after a reconnection."""
        qname = self.qname(spec)
        if qname not in self._callbacks or qname in self._paused:
            return
        self._paused.add(qname)
        queue = self._callbacks[qname][0]
        for entry in [c for c in self._consumers if c[0] is queue]:
            self._consumers.remove(entry)
            with contextlib.suppress(Exception):  # a closed channel delivers nothing anyway
                await queue.cancel(entry[1])

    async def resume(self, spec: QueueSpec) -> None:
        """Take deliveries from ``spec``'s queue again after ``pause`` (none after
        ``stop_consuming``); raises while the broker is away (the caller tries again)."""
        qname = self.qname(spec)
        if qname not in self._paused or self._stopped:
            return
        queue, on_message = self._callbacks[qname]
        tag = await queue.consume(on_message, timeout=10.0)
        self._paused.discard(qname)
        self._consumers.append((queue, tag))

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
                batch = await _next_batch(inbox, max_batch, max_wait_s)
                try:
                    await self._settler.settle_batch(qname, batch, handler)
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
        self._stopped = True
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        self._consumers.clear()

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


async def _next_batch(
    inbox: asyncio.Queue[AbstractIncomingMessage], max_batch: int, max_wait_s: float
) -> list[AbstractIncomingMessage]:
    """The next batch: the first delivery to arrive, those that follow within
    ``max_wait_s``, and any already waiting, up to ``max_batch``."""
    batch = [await inbox.get()]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max_wait_s):
            while len(batch) < max_batch:
                batch.append(await inbox.get())
    while len(batch) < max_batch and not inbox.empty():
        batch.append(inbox.get_nowait())
    return batch
