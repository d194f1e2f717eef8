"""Message handlers of the tenant service.

Queue ``tenant.usage`` (job.finished), consumed in batches: one transaction per batch,
acknowledged after commit. A redelivered event inserts nothing (primary key: job, attempt),
so usage is counted once per attempt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.tenant.usage import record_usage
from shared.events import JobFinished, UnknownEvent, parse_event
from shared.messaging import Delivery, Reject


def make_usage_handler(
    sessions: async_sessionmaker[AsyncSession],
) -> Callable[[list[Delivery]], Awaitable[None]]:
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
            async with sessions() as session, session.begin():
                await record_usage(session=session, events=events)

    return handle
