"""Each worker pool's demand: the work a worker of the pool could be given now.

Demand is the pool's RUNNING jobs, its dispatched QUEUED ones, and per tenant the waiting
ones that are runnable now (``runnable.runnable_now``, the dispatch pass's rule), at most the
tenant's headroom (``max_running_jobs`` minus its jobs in flight; none once its
``cpu_seconds_per_day`` are used up or while it is suspended). Undispatched jobs count, so a
pool at zero workers, which has no slots and gets nothing dispatched, still starts one. The
other waiting jobs are *blocked*: shown (``held_jobs`` of ``GET /v1/admin/pools``), never
demand. Headroom is per tenant and each pool may use all of it, so a tenant with runnable jobs
in both pools can count in both. A job's pool is the device it was dispatched to, else the
device it asked for; ``any`` counts for ``any_pool``.

An array's own row is never demand; its elements are, with a row or not: those without one
(``shared.jobs.materialise``) wait like PENDING jobs of the array's device, and are runnable
within the array's ``max_concurrent`` less its live elements, so a 1,000-element array
asks for workers before the scheduler has materialised any of it. An array chunk
(``shared.jobs.chunks``) counts as one job, whatever its number of elements: it takes one
slot.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Boolean, ColumnElement, case, func, literal, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.scheduler.runnable import cpu_today, runnable_now, tenant_load, waiting
from shared.db.models import Job, Tenant, Worker
from shared.jobs.deps import released
from shared.jobs.materialise import AHEAD, LIVE, VIRTUAL
from shared.jobs.pools import POOLS, heartbeat_fresh
from shared.jobs.states import JobState
from shared.settings import QuotaDefaults


@dataclass(frozen=True)
class Demand:
    queued: int = 0  # QUEUED and dispatched, or waiting (PENDING, QUEUED) and runnable now
    running: int = 0
    blocked: int = 0  # waiting but not runnable now, or beyond the tenant's headroom

    @property
    def total(self) -> int:
        return self.queued + self.running


@dataclass(frozen=True)
class PoolJobs:
    """One tenant's active jobs in one pool."""

    running: int
    dispatched: int  # QUEUED and sent to the pool's queue
    waiting: int  # PENDING, or QUEUED and not dispatched
    runnable: int  # of the waiting, those runnable now


@dataclass
class TenantJobs:
    """One tenant's active jobs per pool, with what its headroom depends on."""

    weight: int
    quotas: dict[str, Any]
    suspended: bool
    in_flight: int = 0
    held_s: float = 0.0  # the timeout_s of its jobs in flight (their hold on the CPU budget)
    pools: dict[str, PoolJobs] = dataclasses.field(default_factory=dict)


def _sql(fragment: str) -> ColumnElement[bool]:
    return literal_column(fragment, Boolean)


async def jobs_per_tenant(*, session: AsyncSession, any_pool: str) -> dict[uuid.UUID, TenantJobs]:
    """Every tenant's active jobs per pool, in one query."""
    pool = func.coalesce(
        Job.assigned_device, case((Job.device == "any", literal(any_pool)), else_=Job.device)
    )
    is_waiting = _sql(waiting("jobs"))
    rows = await session.execute(
        select(
            Tenant.id,
            Tenant.weight,
            Tenant.quotas,
            Tenant.suspended,
            pool,
            func.count().filter(Job.state == JobState.RUNNING.value),
            func.count().filter(Job.state == JobState.QUEUED.value, Job.dispatched_at.is_not(None)),
            func.count().filter(is_waiting),
            func.count().filter(is_waiting, _sql(runnable_now("jobs"))),
            func.coalesce(func.sum(Job.timeout_s).filter(~is_waiting), 0),
        )
        .join_from(Job, Tenant, Job.tenant_id == Tenant.id)
        .where(
            Job.state.in_([s.value for s in (JobState.PENDING, JobState.QUEUED, JobState.RUNNING)]),
            ~Job.is_array,
        )
        .group_by(Tenant.id, pool)
    )
    tenants: dict[uuid.UUID, TenantJobs] = {}
    for tid, weight, quotas, suspended, name, *counts, held_s in rows:
        jobs = PoolJobs(*(int(n) for n in counts))
        t = tenants.setdefault(tid, TenantJobs(weight, quotas, suspended))
        t.in_flight += jobs.running + jobs.dispatched
        t.held_s += float(held_s)
        t.pools[str(name)] = jobs
    await _add_virtual_elements(session, tenants, any_pool=any_pool)
    await _add_chunks(session, tenants, any_pool=any_pool)
    return tenants


# Per tenant and pool, the elements of open arrays that have no row yet: how many, and how
# many of them may run now (within ``max_concurrent`` less the array's live elements; none
# while the array waits on dependencies).
_VIRTUAL = f"""
SELECT t.id, t.weight, t.quotas::text, t.suspended,
       CASE WHEN p.device = 'any' THEN CAST(:any_pool AS text) ELSE p.device END AS pool,
       sum({VIRTUAL}),
       sum(CASE WHEN NOT {released("p")} THEN 0
                WHEN a.max_concurrent IS NULL THEN {VIRTUAL}
                ELSE least({VIRTUAL}, greatest(0, a.max_concurrent - {LIVE})) END)
FROM job_arrays a
JOIN jobs p ON p.id = a.job_id
JOIN tenants t ON t.id = a.tenant_id
{AHEAD}
WHERE NOT a.cancelled AND a.next_index < a.size
GROUP BY t.id, pool
"""  # noqa: S608 (built from constants only)


async def _add_virtual_elements(
    session: AsyncSession, tenants: dict[uuid.UUID, TenantJobs], *, any_pool: str
) -> None:
    """Each tenant's array elements without a row, added to its waiting (and runnable) jobs."""
    rows = await session.execute(text(_VIRTUAL), {"any_pool": any_pool})
    for tid, weight, quotas, suspended, name, n, runnable in rows:
        t = tenants.setdefault(tid, TenantJobs(weight, orjson.loads(quotas), suspended))
        jobs = t.pools.get(str(name), PoolJobs(0, 0, 0, 0))
        t.pools[str(name)] = dataclasses.replace(
            jobs, waiting=jobs.waiting + int(n), runnable=jobs.runnable + int(runnable)
        )


# Per tenant and pool, the array chunks (``shared.jobs.chunks``), each one job: claimed
# (running), dispatched, waiting to be dispatched (runnable now).
_CHUNKS = """
SELECT t.id, t.weight, t.quotas::text, t.suspended,
       coalesce(c.device, CASE WHEN p.device = 'any' THEN CAST(:any_pool AS text)
                               ELSE p.device END) AS pool,
       count(*) FILTER (WHERE c.worker IS NOT NULL),
       count(*) FILTER (WHERE c.worker IS NULL AND c.dispatched_at IS NOT NULL),
       count(*) FILTER (WHERE c.worker IS NULL AND c.dispatched_at IS NULL)
FROM array_chunks c
JOIN jobs p ON p.id = c.array_id
JOIN tenants t ON t.id = c.tenant_id
GROUP BY t.id, pool
"""


async def _add_chunks(
    session: AsyncSession, tenants: dict[uuid.UUID, TenantJobs], *, any_pool: str
) -> None:
    """Each tenant's array chunks, one job each: a chunk takes one worker slot."""
    rows = await session.execute(text(_CHUNKS), {"any_pool": any_pool})
    for tid, weight, quotas, suspended, name, running, dispatched, waiting_n in rows:
        t = tenants.setdefault(tid, TenantJobs(weight, orjson.loads(quotas), suspended))
        jobs = t.pools.get(str(name), PoolJobs(0, 0, 0, 0))
        t.pools[str(name)] = PoolJobs(
            running=jobs.running + int(running),
            dispatched=jobs.dispatched + int(dispatched),
            waiting=jobs.waiting + int(waiting_n),
            runnable=jobs.runnable + int(waiting_n),
        )
        t.in_flight += int(running) + int(dispatched)


async def pool_demand(
    *,
    session: AsyncSession,
    any_pool: str,
    now: datetime | None = None,
    quota_defaults: QuotaDefaults | None = None,
) -> dict[str, Demand]:
    """Each pool's demand (see the module's doc): one query over the active jobs per tenant
    and pool, and one for the CPU seconds of the tenants that have runnable jobs."""
    if now is None:
        now = await session.scalar(select(func.now()))
        assert now is not None
    quota_defaults = quota_defaults or QuotaDefaults()
    tenants = await jobs_per_tenant(session=session, any_pool=any_pool)
    asking = [
        tid
        for tid, t in tenants.items()
        if not t.suspended and any(p.runnable for p in t.pools.values())
    ]
    used = await cpu_today(session=session, tenant_ids=asking, now=now)
    demand = {p: Demand() for p in POOLS}
    for tid, t in tenants.items():
        load = tenant_load(
            tenant_id=tid,
            weight=t.weight,
            stored_quotas=t.quotas,
            quota_defaults=quota_defaults,
            in_flight=t.in_flight,
            cpu_today_s=used.get(tid, 0.0),
            held_s=t.held_s,
        )
        headroom = 0 if t.suspended else load.headroom
        for name, jobs in t.pools.items():
            if name in demand:
                demand[name] = _add(demand[name], jobs, headroom)
    return demand


def _add(demand: Demand, jobs: PoolJobs, headroom: int) -> Demand:
    """``demand`` with one tenant's jobs in the pool added, its runnable ones up to
    ``headroom``."""
    counted = min(jobs.runnable, headroom)
    return Demand(
        queued=demand.queued + jobs.dispatched + counted,
        running=demand.running + jobs.running,
        blocked=demand.blocked + jobs.waiting - counted,
    )


async def live_workers(
    *, session: AsyncSession, now: datetime, worker_ttl_s: float
) -> dict[str, int]:
    """Live workers per pool (fresh heartbeat, not stopping)."""
    rows = await session.execute(
        select(Worker.device, func.count())
        .where(heartbeat_fresh(now, worker_ttl_s), ~Worker.stopping)
        .group_by(Worker.device)
    )
    return {str(d): int(n) for d, n in rows}
