"""The broker topology as typed data: one topic exchange for events, quorum queues per consumer,
each with a delivery limit and a dead-letter queue behind one dead-letter exchange."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DLX = "dlx"  # suffix of the dead-letter exchange name


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


SCHEDULER = QueueSpec("scheduler", ("job.submitted", "job.finished", "job.cancelled"))
WORK_CPU = QueueSpec("work.cpu", ("job.dispatch.cpu",))
WORK_CUDA = QueueSpec("work.cuda", ("job.dispatch.cuda",))

WORK_QUEUES = {"cpu": WORK_CPU, "cuda": WORK_CUDA}

DATAMOVER = QueueSpec("datamover", ("migration.requested",))
TENANT_USAGE = QueueSpec("tenant.usage", ("job.finished",))

# Declared by every service at start, so that a mandatory publish is always routable.
DURABLE_QUEUES: tuple[QueueSpec, ...] = (SCHEDULER, WORK_CPU, WORK_CUDA, DATAMOVER, TENANT_USAGE)


def control_queue(owner: str, bindings: tuple[str, ...] = ("job.cancelled",)) -> QueueSpec:
    """A per-process queue for broadcast control events (cancellation, cache invalidation)."""
    return QueueSpec(f"control.{owner}", bindings, durable=False)
