"""Message handlers of the worker.

Queue ``work.<device>``: the handler waits for a free slot, claims the job in the database
(a lease), and returns, so the delivery is acknowledged at once: a long job never holds an
unacknowledged message. A crash after the claim leaves the lease to expire and the scheduler's
reaper re-queues the job; a crash before the claim commits redelivers the message.

Control queue (``job.cancelled``, ``job.preempted``, one per worker process): stops the job
if it runs here, or has it checkpoint and let go (a preemption).
"""

from __future__ import annotations

import asyncio
import uuid

from shared.events import (
    JobCancelled,
    JobDispatched,
    JobPreempted,
    UnknownEvent,
    parse_event,
)
from shared.jobs.store import Claim
from shared.messaging import Delivery, Reject


def dispatched_job(delivery: Delivery) -> JobDispatched:
    try:
        event = parse_event(delivery.body)
    except UnknownEvent as exc:
        raise Reject(str(exc)) from exc
    if not isinstance(event, JobDispatched):
        raise Reject(f"unexpected {event.type} on a work queue")
    return event


def cancelled_job(delivery: Delivery) -> uuid.UUID | None:
    try:
        event = parse_event(delivery.body)
    except UnknownEvent:
        return None
    return event.job_id if isinstance(event, JobCancelled) else None


def preempted_job(delivery: Delivery) -> uuid.UUID | None:
    """The job of a ``job.preempted`` event: checkpoint it and let it go."""
    try:
        event = parse_event(delivery.body)
    except UnknownEvent:
        return None
    return event.job_id if isinstance(event, JobPreempted) else None


class Running:
    """The jobs this worker runs now, so that a cancellation can find its task."""

    def __init__(self) -> None:
        self.tasks: dict[uuid.UUID, tuple[Claim, asyncio.Task[None]]] = {}

    def cancel(self, job_id: uuid.UUID) -> bool:
        entry = self.tasks.get(job_id)
        if entry is None:
            return False
        entry[1].cancel()
        return True
