"""Scheduler use cases: admission, capacity-bounded priority dispatch, lease reaping.

Functions take ``session`` as a keyword and never commit; events go to the outbox.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.datamover.service import request_stage_in, stage_in_status
from services.scheduler import loads
from services.scheduler.fairshare import Candidate, allocate
from shared.db.models import Job, Worker
from shared.db.outbox import add_events
from shared.errors import NotFound
from shared.events import Event, JobDispatched, JobFinished
from shared.jobs.states import JobState
from shared.jobs.store import Admitted, admit_pending, set_job_state
from shared.settings import QuotaDefaults

Device = Literal["cuda", "cpu"]
DEVICES: tuple[Device, ...] = (
    "cuda",
    "cpu",
)  # GPU first, so that ``any`` jobs land on a GPU when one is free


async def admit(
    *, session: AsyncSession, job_ids: Iterable[uuid.UUID], tiers: list[str] | None = None
) -> int:
    """PENDING -> QUEUED for the given jobs (duplicates and late events are no-ops). A job
    whose inputs are not on the ``local`` tier has the datamover stage them in and waits."""
    admitted = 0
    for job_id in sorted(set(job_ids)):  # a fixed lock order: no deadlocks between batches
        transition = await set_job_state(
            session, job_id, JobState.QUEUED, reason="waiting for a worker slot"
        )
        admitted += transition.accepted
        if transition.accepted and transition.job.inputs:
            job = transition.job
            await stage_in(
                session=session,
                admitted=Admitted(job.id, job.tenant_id, job.inputs),
                tiers=tiers or ["local"],
            )
    return admitted


async def admit_waiting(*, session: AsyncSession, limit: int, tiers: list[str]) -> int:
    """Admit PENDING jobs, oldest first, in one statement (the dispatch loop's first step)."""
    admitted = await admit_pending(session, limit=limit)
    for job in admitted:
        if job.inputs:
            await stage_in(session=session, admitted=job, tiers=tiers)
    return len(admitted)


async def stage_in(*, session: AsyncSession, admitted: Admitted, tiers: list[str]) -> None:
    """Have the datamover bring inputs that are not on ``local`` there; the job waits."""
    staging: list[str] = []
    for name in sorted(set(admitted.inputs.values())):
        try:
            migration = await request_stage_in(
                session=session,
                tenant_id=admitted.tenant_id,
                job_id=admitted.job_id,
                dataset=name,
                tiers=tiers,
            )
        except NotFound:
            await set_job_state(
                session,
                admitted.job_id,
                JobState.FAILED,
                error=f"input dataset {name!r} no longer exists",
            )
            return
        if migration is not None:
            staging.append(name)
    if staging:
        await session.execute(
            update(Job)
            .where(Job.id == admitted.job_id)
            .values(state_reason=f"staging in: {', '.join(staging)}")
        )


async def ready_to_run(*, session: AsyncSession, candidates: list[Candidate]) -> list[Candidate]:
    """Drop candidates whose inputs are still being staged in; fail those whose stage-in
    failed."""
    ready: list[Candidate] = []
    for c in candidates:
        if not c.inputs:
            ready.append(c)
            continue
        status = await stage_in_status(
            session=session, tenant_id=c.tenant_id, job_id=c.job_id, inputs=list(c.inputs)
        )
        if status.failed:
            await set_job_state(
                session,
                c.job_id,
                JobState.FAILED,
                error="stage-in failed: " + "; ".join(status.failed),
            )
        elif status.ready:
            ready.append(c)
    return ready


@dataclass(frozen=True)
class Capacity:
    slots: dict[str, int]
    in_flight: dict[str, int]

    def free(self, device: str, slack: float) -> int:
        slots = self.slots.get(device, 0)
        return max(0, math.ceil(slots * (1 + slack)) - self.in_flight.get(device, 0))


async def capacity(*, session: AsyncSession, now: datetime, worker_ttl_s: float) -> Capacity:
    live = await session.execute(
        select(Worker.device, func.sum(Worker.concurrency))
        .where(Worker.heartbeat_at > now - timedelta(seconds=worker_ttl_s), ~Worker.stopping)
        .group_by(Worker.device)
    )
    busy = await session.execute(
        select(Job.assigned_device, func.count())
        .where(
            Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
            Job.assigned_device.is_not(None),
        )
        .group_by(Job.assigned_device)
    )
    return Capacity(
        slots={d: int(n) for d, n in live.all()},
        in_flight={str(d): int(n) for d, n in busy.all()},
    )


@dataclass(frozen=True)
class FairShareSettings:
    quota_defaults: QuotaDefaults = field(default_factory=QuotaDefaults)
    half_life_s: float = 3600.0
    usage_scale_s: float = 60.0


async def dispatch(
    *,
    session: AsyncSession,
    now: datetime,
    worker_ttl_s: float,
    slack: float,
    batch: int,
    fair: FairShareSettings | None = None,
) -> list[Event]:
    """Fill the free worker slots of each device with waiting jobs, shared fairly between
    tenants (``fairshare.allocate``). Jobs that cannot go anywhere get a ``state_reason``."""
    fair = fair or FairShareSettings()
    cap = await capacity(session=session, now=now, worker_ttl_s=worker_ttl_s)
    events: list[Event] = []
    for device in DEVICES:
        if cap.slots.get(device, 0) == 0:
            continue
        free = min(cap.free(device, slack), batch)
        if free <= 0:
            continue
        waiting = await loads.candidates(session=session, device=device, now=now, per_tenant=free)
        if not waiting:
            continue
        tenants = await loads.tenant_loads(
            session=session,
            tenant_ids=list(waiting),
            now=now,
            quota_defaults=fair.quota_defaults,
            half_life_s=fair.half_life_s,
        )
        for tenant_id, t in tenants.items():
            t.candidates = await ready_to_run(session=session, candidates=waiting[tenant_id])
        plan = allocate(list(tenants.values()), free, usage_scale_s=fair.usage_scale_s)
        await _hold(session=session, held=plan.held)
        events += await _send(session=session, chosen=plan.chosen, device=device, now=now)
    await add_events(session, events)
    return events


async def _send(
    *, session: AsyncSession, chosen: list[Candidate], device: Device, now: datetime
) -> list[Event]:
    """Mark the chosen jobs dispatched (skipping any another scheduler locked meanwhile)."""
    if not chosen:
        return []
    locked = set(
        (
            await session.execute(
                select(Job.id)
                .where(
                    Job.id.in_([c.job_id for c in chosen]),
                    Job.state == JobState.QUEUED.value,
                    Job.dispatched_at.is_(None),
                )
                .with_for_update(skip_locked=True)
            )
        ).scalars()
    )
    rows = [c for c in chosen if c.job_id in locked]
    if not rows:
        return []
    await session.execute(
        update(Job)
        .where(Job.id.in_([c.job_id for c in rows]))
        .values(
            dispatched_at=now,
            assigned_device=device,
            state_reason=f"dispatched to the {device} queue",
        )
    )
    return [
        JobDispatched(tenant_id=c.tenant_id, job_id=c.job_id, device=device, kernel=c.kernel)
        for c in rows
    ]


async def _hold(*, session: AsyncSession, held: dict[uuid.UUID, str]) -> None:
    for tenant_id, reason in held.items():
        await session.execute(
            update(Job)
            .where(
                Job.tenant_id == tenant_id,
                Job.state == JobState.QUEUED.value,
                Job.dispatched_at.is_(None),
                Job.state_reason.is_distinct_from(reason),
            )
            .values(state_reason=reason)
        )


async def explain_waiting(*, session: AsyncSession, now: datetime, worker_ttl_s: float) -> None:
    """Say on each undispatched job that no worker for its device is up (run by the reaper
    loop: a slower cadence than dispatch is enough for a human-readable reason)."""
    cap = await capacity(session=session, now=now, worker_ttl_s=worker_ttl_s)
    waiting = and_(Job.state == JobState.QUEUED.value, Job.dispatched_at.is_(None))
    for device, reason in (
        ("cuda", "waiting: no cuda worker is up"),
        ("any", "waiting: no worker is up"),
        ("cpu", "waiting: no cpu worker is up"),
    ):
        devices = ("cuda", "cpu") if device == "any" else (device,)
        if any(cap.slots.get(d, 0) for d in devices):
            continue
        await session.execute(
            update(Job)
            .where(waiting, Job.device == device, Job.state_reason.is_distinct_from(reason))
            .values(state_reason=reason)
        )


async def reap(
    *, session: AsyncSession, now: datetime, redispatch_after_s: float, batch: int = 200
) -> list[Event]:
    """Return jobs whose worker's lease expired to QUEUED (counting the attempt), or fail
    them when no retries are left; re-dispatch dispatches that no worker ever claimed."""
    expired = (
        (
            await session.execute(
                select(Job.id)
                .where(Job.state == JobState.RUNNING.value, Job.lease_expires_at < now)
                .order_by(Job.id)
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
        )
        .scalars()
        .all()
    )
    events: list[Event] = []
    for job_id in expired:
        t = await set_job_state(
            session,
            job_id,
            JobState.QUEUED,
            reason="the worker's lease expired (worker lost)",
            error="worker lost while running the job",
        )
        if t.accepted:
            events.append(
                JobFinished(
                    tenant_id=t.job.tenant_id,
                    job_id=job_id,
                    attempt=t.job.attempts,
                    state=t.job.state,
                )
            )
    await session.execute(
        update(Job)
        .where(
            Job.state == JobState.QUEUED.value,
            Job.dispatched_at < now - timedelta(seconds=redispatch_after_s),
        )
        .values(
            dispatched_at=None,
            assigned_device=None,
            state_reason="re-dispatching: no worker claimed the job",
        )
    )
    await session.execute(
        delete(Worker).where(Worker.heartbeat_at < now - timedelta(seconds=redispatch_after_s * 10))
    )
    await add_events(session, events)
    return events
