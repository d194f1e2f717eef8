"""Message handlers of the scheduler.

Queue ``scheduler`` (job.cancelled, job.retry, migration.finished), consumed in batches.
The events only wake the dispatch loop, which reads the truth from PostgreSQL (PENDING jobs
to admit, free slots, inputs staged in): a lost, duplicated or redelivered event changes
nothing, and the loop's interval covers an event that never came. Submissions and finished
attempts wake it by PostgreSQL NOTIFY (``shared.db.wakeup``); a ``job.submitted`` or
``job.finished`` message still queued from an earlier release wakes it as any event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from shared.events import UnknownEvent, parse_event
from shared.messaging import Delivery, Reject


def make_event_handler(
    wake_dispatcher: Callable[[], None],
) -> Callable[[list[Delivery]], Awaitable[None]]:
    """Every event on this queue means "what can be dispatched has changed":
    cancellations, retries due, and finished migrations (a job's inputs may be on ``local``
    now)."""

    async def handle(batch: list[Delivery]) -> None:
        for delivery in batch:
            try:
                parse_event(delivery.body)
            except UnknownEvent as exc:
                raise Reject(str(exc)) from exc
        wake_dispatcher()

    return handle
