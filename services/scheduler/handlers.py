"""Message handlers of the scheduler.

Queue ``scheduler`` (job.submitted, job.finished, job.cancelled), consumed in batches: one
transaction per batch, acknowledged after commit. A crash between commit and ack redelivers
the batch; admission of an already QUEUED job is a no-op, so the redelivery is harmless.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler import service
from shared.events import JobSubmitted, UnknownEvent, parse_event
from shared.messaging import Delivery, Reject


def make_event_handler(
    sessions: async_sessionmaker[AsyncSession],
    wake_dispatcher: Callable[[], None],
    tiers: list[str] | None = None,
) -> Callable[[list[Delivery]], Awaitable[None]]:
    async def handle(batch: list[Delivery]) -> None:
        to_admit: list[uuid.UUID] = []
        for delivery in batch:
            try:
                event = parse_event(delivery.body)
            except UnknownEvent as exc:
                raise Reject(str(exc)) from exc
            if isinstance(event, JobSubmitted):
                to_admit.append(event.job_id)
        if to_admit:
            async with sessions() as session, session.begin():
                await service.admit(session=session, job_ids=to_admit, tiers=tiers)
        # Submissions, finished attempts and cancellations all change what can be dispatched.
        wake_dispatcher()

    return handle
