"""Message handlers of the worker.

Queue ``work.<device>``: the handler waits for a free slot, claims the job in the database
(a lease), and returns, so the delivery is acknowledged at once: a long job never holds an
unacknowledged message. While the worker's recent jobs are short, it claims up to one job
per slot without waiting for a free one (the job's run then waits for it: ``take_slot``), so
that a claim's round trip to the database is no part of a slot's cycle. A crash after the
claim leaves the lease to expire and the scheduler's
reaper re-queues the job; a crash before the claim commits redelivers the message.

Control queue (``job.cancelled``, ``job.preempted``, one per worker process): stops the job
if it runs here, or has it checkpoint and let go (a preemption).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from shared.events import (
    JobCancelled,
    JobDispatched,
    JobPreempted,
    UnknownEvent,
    parse_event,
)
from shared.jobs.store import Claim
from shared.messaging import Delivery, Reject


async def take_slot(slots: asyncio.Semaphore, stop: asyncio.Event) -> bool:
    """Take one of ``slots`` when one is free; False, with none taken, when ``stop`` is set
    first. A caller cancelled while it waits takes none either."""
    if stop.is_set():
        return False
    if not slots.locked():
        await slots.acquire()  # free now: no wait
        return True
    acquiring = asyncio.ensure_future(slots.acquire())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((acquiring, stopping), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled while it waits
        stopping.cancel()
        _abandon(acquiring, slots)
        raise
    stopping.cancel()
    if acquiring.done() and not acquiring.cancelled():
        return True
    _abandon(acquiring, slots)
    return False


def _abandon(acquiring: asyncio.Future[Any], slots: asyncio.Semaphore) -> None:
    """Give up a wait for a slot: a slot it took anyway (it came as the wait ended) is given
    back."""

    def give_back(done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is None:
            slots.release()

    acquiring.add_done_callback(give_back)
    acquiring.cancel()


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
