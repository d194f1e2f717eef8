"""Queries that feed fair share: each tenant's waiting candidates, jobs in flight, quotas and
recent CPU usage (from ``job_attempts``, recorded once per attempt by the workers)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import Float, and_, cast, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.scheduler.fairshare import Candidate, TenantLoad
from shared.db.models import Job, JobAttempt, Tenant
from shared.jobs.states import JobState
from shared.settings import QuotaDefaults


async def candidates(
    *, session: AsyncSession, device: str, now: datetime, per_tenant: int
) -> dict[uuid.UUID, list[Candidate]]:
    """Up to ``per_tenant`` dispatchable jobs of every tenant, best first (one index probe
    per tenant, so a flooded queue costs no more than a short one)."""
    job = (
        select(Job.id, Job.tenant_id, Job.kernel, Job.priority, Job.created_at, Job.inputs)
        .where(
            Job.tenant_id == Tenant.id,
            Job.state == JobState.QUEUED.value,
            Job.dispatched_at.is_(None),
            Job.device.in_([device, "any"]),
            or_(Job.run_after.is_(None), Job.run_after <= now),
        )
        .order_by(Job.priority.desc(), Job.created_at, Job.id)
        .limit(per_tenant)
        .lateral()
    )
    rows = await session.execute(
        select(
            job.c.id,
            job.c.tenant_id,
            job.c.kernel,
            job.c.priority,
            job.c.created_at,
            job.c.inputs,
        )
        .select_from(Tenant)
        .join(job, literal(True))
        .where(~Tenant.suspended)
    )
    out: dict[uuid.UUID, list[Candidate]] = {}
    for r in rows:
        out.setdefault(r.tenant_id, []).append(
            Candidate(
                r.id,
                r.tenant_id,
                r.kernel,
                r.priority,
                r.created_at,
                tuple(sorted(set((r.inputs or {}).values()))),
            )
        )
    return out


async def tenant_loads(
    *,
    session: AsyncSession,
    tenant_ids: list[uuid.UUID],
    now: datetime,
    quota_defaults: QuotaDefaults,
    half_life_s: float,
) -> dict[uuid.UUID, TenantLoad]:
    tenants = (
        await session.execute(
            select(Tenant.id, Tenant.weight, Tenant.quotas).where(Tenant.id.in_(tenant_ids))
        )
    ).all()
    busy = await session.execute(
        select(Job.tenant_id, func.count())
        .where(
            Job.tenant_id.in_(tenant_ids),
            or_(
                Job.state == JobState.RUNNING.value,
                and_(Job.state == JobState.QUEUED.value, Job.dispatched_at.is_not(None)),
            ),
        )
        .group_by(Job.tenant_id)
    )
    in_flight = {r[0]: int(r[1]) for r in busy}
    usage = await _usage(session=session, tenant_ids=tenant_ids, now=now, half_life_s=half_life_s)
    loads: dict[uuid.UUID, TenantLoad] = {}
    for t in tenants:
        quotas = quota_defaults.effective(t.quotas)
        decayed, today = usage.get(t.id, (0.0, 0.0))
        loads[t.id] = TenantLoad(
            tenant_id=t.id,
            weight=t.weight,
            in_flight=in_flight.get(t.id, 0),
            max_running=int(quotas["max_running_jobs"]),
            usage_s=decayed,
            cpu_today_s=today,
            cpu_per_day_s=float(quotas["cpu_seconds_per_day"]),
        )
    return loads


async def _usage(
    *, session: AsyncSession, tenant_ids: list[uuid.UUID], now: datetime, half_life_s: float
) -> dict[uuid.UUID, tuple[float, float]]:
    """(CPU seconds decayed by age with ``half_life_s``, CPU seconds in the last 24 h)."""
    day_ago = now - timedelta(days=1)
    horizon = now - timedelta(seconds=max(86_400.0, 8 * half_life_s))
    age_s = func.extract("epoch", literal(now) - JobAttempt.finished_at)
    decay = func.power(0.5, cast(age_s, Float) / half_life_s)
    rows = await session.execute(
        select(
            JobAttempt.tenant_id,
            func.coalesce(func.sum(JobAttempt.cpu_seconds * decay), 0.0),
            func.coalesce(
                func.sum(JobAttempt.cpu_seconds).filter(JobAttempt.finished_at > day_ago), 0.0
            ),
        )
        .where(JobAttempt.tenant_id.in_(tenant_ids), JobAttempt.finished_at > horizon)
        .group_by(JobAttempt.tenant_id)
    )
    return {r[0]: (float(r[1]), float(r[2])) for r in rows}
