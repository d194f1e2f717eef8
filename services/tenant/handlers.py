"""Message handlers of the tenant service.

Queue ``tenant.usage`` (job.finished), consumed in batches: one statement per batch
(``usage.record_usage``), acknowledged after it commits. A redelivered event inserts nothing
(primary key: job, attempt), so usage is counted once per attempt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from services.tenant.usage import record_usage
from shared.db.raw import raw_connection
from shared.events import JobFinished, UnknownEvent, parse_event
from shared.messaging import Delivery, Reject


def make_usage_handler(engine: AsyncEngine) -> Callable[[list[Delivery]], Awaitable[None]]:
    async def handle(batch: list[Delivery]) -> None:
        events: list[JobFinished] = []
        for delivery in batch:
            try:
                event = parse_event(delivery.body)
            except UnknownEvent as exc:
                raise Reject(str(exc)) from exc
            if isinstance(event, JobFinished):
                events.append(event)
        if events:
            async with raw_connection(engine) as conn:
                await record_usage(conn=conn, events=events)

    return handle
