"""Preemption through checkpoints, and what stopping a worker loses.

Preemption (``preempt``): on a pool (device) with no free slot and at its maximum size, a
waiting job whose ``priority`` is higher than that of a running job that checkpoints
(``stencil2d``, ``nbody``, ``montecarlo_pi`` with ``checkpoint_interval_s > 0``) takes that
job's slot: the lowest-priority such job (the one that started last among equals, which has
done the least) is asked to checkpoint and let go (a ``job.preempted`` event on its worker's
control queue). The worker saves the job's state at once and reports it QUEUED with
``state_reason`` ``"preempted"``: it uses no retry and resumes from its checkpoint when a slot
is free for it again. At most one preemption per pool every ``min_gap_s``, and only for a
strictly higher priority: two priorities that alternate cannot make the pool thrash (a
preempted job never preempts the job that took its slot, whose priority is higher).

One scheduler preempts at a time (a transaction-scoped advisory lock); the gap is kept in
the database (``preemption_gaps``: each pool's last preemption, on the database's clock,
written in the preemption's transaction), so that it holds across a scheduler's restart and
between two schedulers.

Fair share uses the same mechanism when no priority asks for it: a tenant with a job waiting
on a full pool at its maximum and none running there, while another tenant runs at least one
job more than its weighted share of the pool's running jobs (its weight over the summed
weights of the tenants running or waiting there), takes the slot of that tenant's
lowest-priority, latest-started checkpointing job (never one of a higher priority than its
own). Once the waiting tenant runs a job it is no longer starved: a preemption gives it one
slot, and the rest comes back to it as the other tenant's jobs end (the dispatcher's fair
share). The same gap applies to both.

What stopping a worker loses (``loss_per_worker``, the autoscaler's scale-down order): a
running job that checkpoints loses nothing but its checkpoint's write (a drain saves its
state at once): 1 each; any other job all it has run so far: 1 plus its seconds. The
backends stop the workers that lose least first (idle ones: nothing).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.scheduler.settings import AutoscaleSettings
from shared.db import advisory
from shared.db.outbox import add_event
from shared.events import JobPreempted
from shared.logging import get_logger

log = get_logger(__name__)

ADVISORY_LOCK = advisory.PREEMPT  # one preempting scheduler at a time
CHECKPOINTING = ("stencil2d", "nbody", "montecarlo_pi")


@dataclass(frozen=True)
class Preemption:
    job_id: uuid.UUID
    tenant_id: uuid.UUID
    worker: str
    priority: int
    for_job: uuid.UUID
    for_priority: int
    reason: str = "priority"  # or "fair share"


# The highest-priority job waiting for ``device`` that no retry backoff, dependency or stage-in
# holds, and the lowest-priority running job there that checkpoints, if lower. $1 device.
_CANDIDATES = text(
    """
    WITH waiting AS (
        SELECT id, priority FROM jobs
        WHERE state = 'QUEUED' AND NOT is_array
          AND device IN (:device, 'any') AND (run_after IS NULL OR run_after <= now())
          AND deps_left = 0
        ORDER BY priority DESC, created_at
        LIMIT 1
    ), victim AS (
        SELECT id, tenant_id, worker, priority FROM jobs
        WHERE state = 'RUNNING' AND assigned_device = :device AND worker IS NOT NULL
          AND kernel = ANY(:kernels) AND checkpoint_interval_s > 0
        ORDER BY priority, started_at DESC
        LIMIT 1
    )
    SELECT victim.id, victim.tenant_id, victim.worker, victim.priority, waiting.id,
           waiting.priority
    FROM waiting, victim
    WHERE waiting.priority > victim.priority AND (SELECT count(*) FROM jobs
        WHERE state = 'RUNNING' AND assigned_device = :device) >= :slots
    """
)


# Fair share: a tenant with a job waiting for ``device`` and none running there, while another
# tenant runs at least one job more than its share of the device's running jobs (its weight
# over the weights of the tenants that run or wait there): the hog's lowest-priority,
# latest-started checkpointing job. Returned as ``_CANDIDATES`` returns its pair.
_FAIR = text(
    """
    WITH waiting AS (
        SELECT tenant_id, min(id::text)::uuid AS id, max(priority) AS priority FROM jobs
        WHERE state = 'QUEUED' AND NOT is_array
          AND device IN (:device, 'any') AND (run_after IS NULL OR run_after <= now())
          AND deps_left = 0
        GROUP BY tenant_id
    ), holding AS (
        SELECT tenant_id, count(*) AS n FROM jobs
        WHERE state = 'RUNNING' AND assigned_device = :device
        GROUP BY tenant_id
    ), starved AS (
        SELECT w.tenant_id, w.id, w.priority FROM waiting w
        LEFT JOIN holding h ON h.tenant_id = w.tenant_id
        WHERE h.n IS NULL
        ORDER BY w.priority DESC, w.tenant_id
        LIMIT 1
    ), active AS (
        SELECT tenant_id FROM waiting UNION SELECT tenant_id FROM holding
    ), total AS (
        SELECT sum(t.weight)::float8 AS weight, (SELECT sum(n) FROM holding)::float8 AS n
        FROM tenants t JOIN active a ON a.tenant_id = t.id
    ), hog AS (
        SELECT h.tenant_id FROM holding h JOIN tenants t ON t.id = h.tenant_id, total
        WHERE h.n >= total.n * t.weight / total.weight + 1
        ORDER BY h.n * total.weight / t.weight DESC, h.tenant_id
        LIMIT 1
    ), victim AS (
        SELECT j.id, j.tenant_id, j.worker, j.priority FROM jobs j JOIN hog USING (tenant_id)
        WHERE j.state = 'RUNNING' AND j.assigned_device = :device AND j.worker IS NOT NULL
          AND j.kernel = ANY(:kernels) AND j.checkpoint_interval_s > 0
        ORDER BY j.priority, j.started_at DESC
        LIMIT 1
    )
    SELECT victim.id, victim.tenant_id, victim.worker, victim.priority, starved.id,
           starved.priority
    FROM starved, victim
    WHERE starved.priority >= victim.priority AND (SELECT sum(n) FROM holding) >= :slots
    """
)


# The pool's last preemption, if within the gap of :gap seconds (the database's clock).
_IN_GAP = text(
    "SELECT last_at FROM preemption_gaps"
    " WHERE pool = :pool AND last_at > now() - make_interval(secs => :gap)"
)
_PREEMPTED_NOW = text(
    "INSERT INTO preemption_gaps (pool, last_at) VALUES (:pool, now())"
    " ON CONFLICT (pool) DO UPDATE SET last_at = excluded.last_at"
)


_UNDISPATCH = text(
    "UPDATE jobs SET dispatched_at = NULL, assigned_device = NULL"
    " WHERE id = :id AND state = 'QUEUED'"
)


@dataclass
class Preemptor:
    """Preempts at most one job per pool every ``min_gap_s`` (kept in ``preemption_gaps``;
    ``last``, this scheduler's own, only spares it the query within the gap)."""

    min_gap_s: float
    last: dict[str, float] = field(default_factory=dict)  # pool -> monotonic time

    async def step(
        self, session: AsyncSession, *, device: str, full: bool, at_max: bool, slots: int = 0
    ) -> Preemption | None:
        """Preempt on ``device`` if a job there should (``full``: no slot free; ``at_max``:
        the pool cannot grow; ``slots``: the pool's, which its running jobs must fill), in
        the caller's transaction (the event goes with it)."""
        if not (full and at_max):
            return None
        now = time.monotonic()
        if now - self.last.get(device, -float("inf")) < self.min_gap_s:
            return None
        if not await session.scalar(select(func.pg_try_advisory_xact_lock(ADVISORY_LOCK))):
            return None
        # another scheduler's preemption, or this one's before a restart
        if (
            self.min_gap_s > 0
            and (await session.execute(_IN_GAP, {"pool": device, "gap": self.min_gap_s})).first()
        ):
            return None
        params = {"device": device, "kernels": list(CHECKPOINTING), "slots": slots}
        row = (await session.execute(_CANDIDATES, params)).first()
        reason = "priority"
        if row is None:
            row = (await session.execute(_FAIR, params)).first()
            reason = "fair share"
        if row is None:
            return None
        p = Preemption(row[0], row[1], str(row[2]), int(row[3]), row[4], int(row[5]), reason)
        await add_event(
            session, JobPreempted(tenant_id=p.tenant_id, job_id=p.job_id, worker=p.worker)
        )
        # sent again: its message may wait on a worker whose slots stay busy, while the slot
        # made here is on another one (a worker that claims it first makes the other
        # message a duplicate, which finds the job taken)
        await session.execute(_UNDISPATCH, {"id": p.for_job})
        await session.execute(_PREEMPTED_NOW, {"pool": device})
        self.last[device] = now
        log.info(
            "job_preempted",
            job_id=str(p.job_id),
            worker=p.worker,
            priority=p.priority,
            for_job=str(p.for_job),
            for_priority=p.for_priority,
            reason=p.reason,
        )
        return p


# Per worker: 1 per running job, plus the seconds run so far of each that does not checkpoint.
_LOSS = text(
    """
    SELECT worker, sum(1 + CASE WHEN kernel = ANY(:kernels) AND checkpoint_interval_s > 0
                               THEN 0
                               ELSE extract(epoch FROM now() - coalesce(started_at, now()))
                          END)::bigint
    FROM jobs WHERE state = 'RUNNING' AND worker IS NOT NULL
    GROUP BY worker
    """
)


async def loss_per_worker(*, session: AsyncSession) -> dict[str, int]:
    """What stopping each worker loses (workers that run nothing are absent: they lose
    nothing)."""
    rows = await session.execute(_LOSS, {"kernels": list(CHECKPOINTING)})
    return {str(w): int(n) for w, n in rows}


def pool_at_max(settings: AutoscaleSettings, device: str, live: int) -> bool:
    """Whether ``device``'s pool cannot grow: a fixed pool always, an autoscaled one at its
    ``max_workers``."""
    if not settings.enabled:
        return True
    bounds = settings.cpu if device == "cpu" else settings.cuda
    return live >= bounds.max_workers


async def preempt_pass(
    session: AsyncSession,
    preemptor: Preemptor,
    *,
    autoscale: AutoscaleSettings,
    worker_ttl_s: float,
) -> list[Preemption]:
    """One pass over the pools, in the caller's transaction."""
    from services.scheduler.demand import live_workers
    from services.scheduler.service import session_capacity

    cap = await session_capacity(session=session, worker_ttl_s=worker_ttl_s)
    now = await session.scalar(select(func.now()))
    assert now is not None
    live = await live_workers(session=session, now=now, worker_ttl_s=worker_ttl_s)
    done: list[Preemption] = []
    for device in ("cpu", "cuda"):
        if cap.slots.get(device, 0) == 0:
            continue
        full = cap.free(device, 0.0) <= 0
        at_max = pool_at_max(autoscale, device, live.get(device, 0))
        p = await preemptor.step(
            session, device=device, full=full, at_max=at_max, slots=cap.slots.get(device, 0)
        )
        if p is not None:
            done.append(p)
    return done
