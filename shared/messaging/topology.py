"""The broker topology as typed data: one topic exchange for events, quorum queues per consumer,
each with a delivery limit and a dead-letter queue behind one dead-letter exchange, and delay
queues (one per backoff level) that dead-letter back into the events exchange."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.settings import DELAY_LEVELS_MS

DLX = "dlx"  # suffix of the dead-letter exchange name
DELAY = "delay"  # suffix of the delay exchange name

# names the delay queue on the (headers) delay exchange; a header starting with "x-" would
# be ignored by its bindings
DELAY_HEADER = "stratus-delay-queue"
RETRIES_HEADER = "x-stratus-retries"  # how many times a consumer has retried this message


@dataclass(frozen=True)
class QueueSpec:
    """A queue and the routing keys it binds on the events exchange.

    ``durable`` queues are quorum queues with a delivery limit and a dead-letter queue.
    Non-durable ones are per-process control queues (classic, exclusive, auto-delete).
    """

    name: str
    bindings: tuple[str, ...]
    durable: bool = True
    delivery_limit: int | None = None
    arguments: dict[str, Any] = field(default_factory=dict)


# job.cancelled: a slot may be free (the worker also gets it, on its control queue)
# job.retry: a retried job's backoff ended (it comes through a delay queue)
# migration.finished: a job's stage-in may be done, so the job may be dispatched now
# (submissions and finished attempts wake the scheduler by PostgreSQL NOTIFY instead:
# shared.db.wakeup)
SCHEDULER = QueueSpec("scheduler", ("job.cancelled", "job.retry", "migration.finished"))
WORK_CPU = QueueSpec("work.cpu", ("job.dispatch.cpu",))
WORK_CUDA = QueueSpec("work.cuda", ("job.dispatch.cuda",))

WORK_QUEUES = {"cpu": WORK_CPU, "cuda": WORK_CUDA}

DATAMOVER = QueueSpec("datamover", ("migration.requested",))

# Declared by every service at start, so that a mandatory publish is always routable.
DURABLE_QUEUES: tuple[QueueSpec, ...] = (SCHEDULER, WORK_CPU, WORK_CUDA, DATAMOVER)


def delay_level(delay_ms: int, levels: tuple[int, ...] = DELAY_LEVELS_MS) -> int:
    """The level that holds a delay: the shortest one at least as long (or the longest)."""
    for level in levels:
        if delay_ms <= level:
            return level
    return levels[-1]


def retry_routing_key(queue_name: str) -> str:
    """A consumer's retried messages come back on this key, bound to its queue alone."""
    return f"retry.{queue_name}"


def control_queue(owner: str, bindings: tuple[str, ...] = ("job.cancelled",)) -> QueueSpec:
    """A per-process queue for broadcast control events (cancellation, cache invalidation)."""
    return QueueSpec(f"control.{owner}", bindings, durable=False)
