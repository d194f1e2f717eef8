"""Transactional outbox: events are written with the change they announce, then a relay
publishes them with confirms and deletes them. A crash between publish and delete publishes an
event twice; every consumer tolerates duplicates (at-least-once).

The relay runs in every service and wakes after nearly every commit, so its two statements are
fixed SQL on plain asyncpg (prepared once per connection) rather than SQLAlchemy statements
built per batch."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared import tracing
from shared.db.models import Outbox
from shared.db.raw import raw_connection
from shared.events import Event
from shared.logging import get_logger
from shared.messaging.broker import Broker, Outgoing
from shared.settings import OutboxSettings
from shared.telemetry import OUTBOX_PENDING

log = get_logger(__name__)


async def add_events(session: AsyncSession, events: list[Event]) -> None:
    """Stage events in the caller's transaction; nothing is published before it commits."""
    if not events:
        return
    session.info["outbox"] = True  # lets the owner of the transaction wake the relay
    await session.execute(
        insert(Outbox),
        [
            {
                "message_id": e.event_id,
                "routing_key": e.routing_key,
                "body": e.to_bytes(),
                "delay_ms": e.publish_delay_ms,
            }
            for e in events
        ],
    )


async def add_event(session: AsyncSession, event: Event) -> None:
    await add_events(session, [event])


class OutboxRelay:
    """Background loop: publish waiting outbox rows in bounded batches.

    ``wake()`` after a commit gives low latency; the interval poll picks up rows written by
    other processes or left behind by a crash. Rows are claimed with ``SKIP LOCKED`` so any
    number of relays can run side by side. ``engine`` is the relay's own (a pool of its own,
    so that a busy request pool never delays events).
    """

    def __init__(self, engine: AsyncEngine, broker: Broker, settings: OutboxSettings) -> None:
        self.engine = engine
        self.broker = broker
        self.settings = settings
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self.settings.enabled and self._task is None:
            self._task = asyncio.create_task(self.run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()  # before reading: a wake-up during the pass is not lost
            try:
                sent = await self.relay_once()
                failures = 0
            except Exception as exc:
                failures += 1
                delay = min(0.2 * 2**failures, 5.0) * (0.5 + random.random())
                log.warning("outbox_relay_failed", error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                continue
            if sent >= self.settings.batch_size:
                continue  # more waiting: keep going without sleeping
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.interval_s):
                    await self._wake.wait()

    async def relay_once(self) -> int:
        """Publish one batch; return how many rows were published.

        One statement claims the batch and deletes it, uncommitted: the rows stay locked
        (``SKIP LOCKED``: other relays take the next ones) and in the table for everyone else
        until the transaction commits, which it does only once the broker confirmed every
        message. A failed publish raises, the transaction rolls back, the rows stay."""
        async with raw_connection(self.engine) as conn, conn.transaction():
            rows = await conn.fetch(_TAKE, self.settings.batch_size)
            OUTBOX_PENDING.set(len(rows))
            if not rows:
                return 0
            traced = tracing.enabled()
            await self.broker.publish_many([_outgoing(*row, traced=traced) for row in rows])
        if traced:  # a line per job dispatch published, in its dispatch span
            _log_dispatches(rows)
        return len(rows)


async def publish_or_stage(
    broker: Broker, sessions: async_sessionmaker[AsyncSession], events: Sequence[Event]
) -> bool:
    """Publish ``events`` at once, confirmed, or else stage them in the outbox for the relay.

    For events that announce a change already committed, whose state the database holds (a
    job's dispatch: a lost message is re-sent by the scheduler's re-dispatch): they skip the
    outbox's insert, delete and relay transaction. When the broker refuses any of them, all
    are staged (``sessions``' own transaction) and the relay publishes them once it can; the
    ones already confirmed then arrive twice, which every consumer tolerates. Whether they
    were published directly; raises only when staging fails too."""
    if not events:
        return True
    traced = tracing.enabled()
    rows = [(e.event_id, e.routing_key, e.to_bytes(), e.publish_delay_ms) for e in events]
    try:
        await broker.publish_many([_outgoing(*row, traced=traced) for row in rows])
    except Exception as exc:
        log.warning("publish_failed_staged", error=type(exc).__name__, events=len(events))
        async with sessions() as session, session.begin():
            await add_events(session, list(events))
        return False
    if traced:
        _log_dispatches(rows)
    return True


def _outgoing(
    message_id: Any, routing_key: str, body: bytes, delay_ms: int | None, *, traced: bool
) -> Outgoing:
    return Outgoing(
        routing_key,
        body,
        str(message_id),
        delay_ms=delay_ms,
        # W3C traceparent of a job's dispatch, while tracing is on
        headers=tracing.message_headers(routing_key, body) if traced else None,
    )


def _log_dispatches(rows: list[Any]) -> None:
    for message_id, routing_key, body, _delay_ms in rows:
        ids = tracing.dispatch_of(routing_key, body)
        if ids is not None:
            with tracing.about(ids[0], ids[1]):
                log.info("job_dispatch_published", job_id=str(ids[0]), message_id=str(message_id))


# The oldest rows no other relay holds, deleted in this transaction, in the order written.
_TAKE = """
WITH batch AS (
    SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
), taken AS (
    DELETE FROM outbox USING batch WHERE outbox.id = batch.id
    RETURNING outbox.id, message_id, routing_key, body, delay_ms
)
SELECT message_id, routing_key, body, delay_ms FROM taken ORDER BY id
"""
