"""One place decides each delivery's outcome: success acks, ``Reject`` dead-letters at
once, anything else is retried later through a delay queue with its retry count in the
message, until the queue's limit dead-letters it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from shared.logging import get_logger
from shared.messaging.admin import Delivery, delivery_of, int_header
from shared.messaging.topology import DELAY_HEADER, RETRIES_HEADER, retry_routing_key
from shared.resilience import RetryPolicy
from shared.telemetry import MESSAGES

log = get_logger(__name__)


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


@dataclass
class Settler:
    """Settles the deliveries of a broker's consumers. ``publish`` is the broker's confirmed
    publish (retries go through it); ``limits``: the retries each durable queue allows
    (``default_limit`` for one not in it); ``retry``: the delay before each retry."""

    publish: Callable[[Outgoing], Awaitable[None]]
    retry: RetryPolicy
    default_limit: int
    limits: dict[str, int] = field(default_factory=dict)

    async def settle_batch(
        self, qname: str, batch: list[AbstractIncomingMessage], handler: BatchHandler
    ) -> None:
        try:
            await handler([delivery_of(m) for m in batch])
        except Exception as exc:
            log.warning("batch_failed", queue=qname, size=len(batch), error=type(exc).__name__)
            for message in batch:
                await self.settle(qname, message, handler([delivery_of(message)]))
            return
        await _ack_all(batch)
        MESSAGES.labels(qname, "ack").inc(len(batch))

    async def settle(
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
        limit = self.limits.get(qname, self.default_limit)
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
        delay_ms = round(self.retry.delay(retries) * 1000)
        try:
            await self.publish(_retried(qname, message, retries, delay_ms))
        except Exception as publish_exc:
            log.warning("retry_publish_failed", queue=qname, error=type(publish_exc).__name__)
            count = int_header(message, "x-delivery-count")
            await asyncio.sleep(min(0.1 * 2**count, 2.0))  # never a hot requeue loop
            await message.nack(requeue=True)
            MESSAGES.labels(qname, "requeue").inc()
            return
        await message.ack()
        MESSAGES.labels(qname, "retry").inc()


def _retried(qname: str, message: AbstractIncomingMessage, retries: int, delay_ms: int) -> Outgoing:
    """``message`` again, for ``qname`` alone after ``delay_ms``, counting ``retries``; the
    broker's own bookkeeping headers stay behind."""
    headers = {
        k: v
        for k, v in (message.headers or {}).items()
        if k not in ("x-death", "x-delivery-count", DELAY_HEADER)
    }
    headers[RETRIES_HEADER] = retries
    return Outgoing(
        retry_routing_key(qname),
        message.body,
        message.message_id or new_message_id(),
        message.type,
        delay_ms=delay_ms,
        headers=headers,
    )


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
