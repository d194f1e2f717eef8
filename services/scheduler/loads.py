"""Queries that feed fair share: each tenant's waiting candidates, jobs in flight, quotas and
recent CPU usage (from ``job_attempts``, recorded once per attempt by the workers); and the
conditions the autoscaler's demand shares with dispatch."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Float, and_, cast, exists, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.scheduler.fairshare import Candidate, TenantLoad
from shared.db.models import Dataset, Job, JobAttempt, Migration, Tenant
from shared.jobs.states import JobState
from shared.settings import QuotaDefaults
from shared.storage.migrations import MigrationState

DAY = timedelta(days=1)  # the window of cpu_seconds_per_day


def in_flight() -> ColumnElement[bool]:
    """A job that holds one of its tenant's ``max_running_jobs``: RUNNING, or QUEUED and
    dispatched (on its way to a worker)."""
    return or_(
        Job.state == JobState.RUNNING.value,
        and_(Job.state == JobState.QUEUED.value, Job.dispatched_at.is_not(None)),
    )


def due(now: datetime) -> ColumnElement[bool]:
    """Not in a retry's backoff (``run_after`` passed or unset)."""
    return or_(Job.run_after.is_(None), Job.run_after <= now)


def waiting_for_stage_in() -> ColumnElement[bool]:
    """The datamover's ``stage_in_status`` as a condition on a ``jobs`` row of the enclosing
    query: some input is not on ``local`` yet and none of the missing ones' stage-ins failed,
    so the dispatcher (``service.ready_to_run``) neither dispatches the job nor fails it."""
    name = func.jsonb_each_text(Job.inputs).table_valued("key", "value").alias("job_input")
    on_local = (
        exists()
        .where(
            Dataset.tenant_id == Job.tenant_id,
            Dataset.name == name.c.value,
            Dataset.tiers.has_key("local"),
        )
        .correlate_except(Dataset)
    )  # ``jobs`` is two levels up: auto-correlation stops at one
    failed = (
        exists()
        .where(
            Migration.job_id == Job.id,
            Migration.dataset == name.c.value,
            Migration.state == MigrationState.FAILED.value,
        )
        .correlate_except(Migration)
    )
    return and_(
        exists(select(name.c.value).where(~on_local)),
        ~exists(select(name.c.value).where(~on_local, failed)),
    )


def tenant_load(
    *,
    tenant_id: uuid.UUID,
    weight: int,
    stored_quotas: dict[str, Any],
    quota_defaults: QuotaDefaults,
    in_flight: int,
    usage_s: float = 0.0,
    cpu_today_s: float = 0.0,
) -> TenantLoad:
    """A tenant's load with its effective quotas (its own values over the defaults)."""
    quotas = quota_defaults.effective(stored_quotas)
    return TenantLoad(
        tenant_id=tenant_id,
        weight=weight,
        in_flight=in_flight,
        max_running=int(quotas["max_running_jobs"]),
        usage_s=usage_s,
        cpu_today_s=cpu_today_s,
        cpu_per_day_s=float(quotas["cpu_seconds_per_day"]),
    )


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
            due(now),
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
        .where(Job.tenant_id.in_(tenant_ids), in_flight())
        .group_by(Job.tenant_id)
    )
    flying = {r[0]: int(r[1]) for r in busy}
    usage = await _usage(session=session, tenant_ids=tenant_ids, now=now, half_life_s=half_life_s)
    loads: dict[uuid.UUID, TenantLoad] = {}
    for t in tenants:
        decayed, today = usage.get(t.id, (0.0, 0.0))
        loads[t.id] = tenant_load(
            tenant_id=t.id,
            weight=t.weight,
            stored_quotas=t.quotas,
            quota_defaults=quota_defaults,
            in_flight=flying.get(t.id, 0),
            usage_s=decayed,
            cpu_today_s=today,
        )
    return loads


async def cpu_today(
    *, session: AsyncSession, tenant_ids: list[uuid.UUID], now: datetime
) -> dict[uuid.UUID, float]:
    """CPU seconds in the last 24 h per tenant (what ``cpu_seconds_per_day`` limits)."""
    if not tenant_ids:
        return {}
    rows = await session.execute(
        select(JobAttempt.tenant_id, func.sum(JobAttempt.cpu_seconds))
        .where(JobAttempt.tenant_id.in_(tenant_ids), JobAttempt.finished_at > now - DAY)
        .group_by(JobAttempt.tenant_id)
    )
    return {r[0]: float(r[1] or 0.0) for r in rows}


async def _usage(
    *, session: AsyncSession, tenant_ids: list[uuid.UUID], now: datetime, half_life_s: float
) -> dict[uuid.UUID, tuple[float, float]]:
    """(CPU seconds decayed by age with ``half_life_s``, CPU seconds in the last 24 h)."""
    day_ago = now - DAY
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
