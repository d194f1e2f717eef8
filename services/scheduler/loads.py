"""Queries that feed fair share: each tenant's waiting candidates, jobs in flight, quotas and
recent CPU usage (from ``job_attempts``, recorded once per attempt by the workers); and the
conditions the autoscaler's demand shares with dispatch.

The dispatch pass runs once per wake-up (every job event), so its query is fixed SQL on plain
asyncpg (``WAITING_LOADS``): building it with SQLAlchemy cost more CPU than PostgreSQL spent
running it. The autoscaler's queries, once per interval, stay SQLAlchemy expressions."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.scheduler.fairshare import Candidate, TenantLoad
from shared.db.models import Dataset, Job, JobAttempt, Migration
from shared.jobs.usage import IN_FLIGHT
from shared.settings import QuotaDefaults
from shared.storage.migrations import MigrationState

DAY = timedelta(days=1)  # the window of cpu_seconds_per_day


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
    held_s: float = 0.0,
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
        held_s=held_s,
    )


# The dispatch pass's one query per device: every unsuspended tenant's best dispatchable jobs
# (one index probe per tenant on ix_jobs_tenant_dispatchable, so a flooded queue costs no
# more than a short one), joined with what fair share needs of each tenant that has some:
# weight, stored quotas, jobs in flight (``shared.jobs.usage.IN_FLIGHT``: what
# max_running_jobs counts) with the CPU seconds they hold (their timeout_s) and how many are on
# this device, CPU seconds decayed by age with the half-life, and CPU seconds in the last 24 h
# (with the holds, what cpu_seconds_per_day limits). Fixed text, prepared once per connection.
# $1 device, $2 jobs per tenant, $3 half-life (s), $4 how far back usage counts (s).
WAITING_LOADS = f"""
WITH waiting AS (
    SELECT j.id, j.tenant_id, j.kernel, j.priority, j.created_at, j.inputs::text AS inputs,
           j.timeout_s
    FROM tenants t
    CROSS JOIN LATERAL (
        SELECT id, tenant_id, kernel, priority, created_at, inputs, timeout_s FROM jobs
        WHERE jobs.tenant_id = t.id AND state = 'QUEUED' AND dispatched_at IS NULL
          AND device IN ($1::text, 'any') AND (run_after IS NULL OR run_after <= now())
        ORDER BY priority DESC, created_at, id
        LIMIT $2
    ) j
    WHERE NOT t.suspended
), asking AS (
    SELECT t.id, t.weight, t.quotas::text AS quotas, f.in_flight, f.held, f.on_device,
           u.decayed, u.today
    FROM tenants t
    CROSS JOIN LATERAL (
        SELECT count(*) AS in_flight, coalesce(sum(timeout_s), 0)::float8 AS held,
               count(*) FILTER (WHERE assigned_device = $1::text) AS on_device
        FROM jobs WHERE jobs.tenant_id = t.id AND {IN_FLIGHT}
    ) f
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(a.cpu_seconds * power(
                   0.5, extract(epoch FROM now() - a.finished_at)::float8 / $3::float8)), 0)
                   AS decayed,
               coalesce(sum(a.cpu_seconds) FILTER (WHERE a.finished_at > now() - interval '1 day'),
                        0) AS today
        FROM job_attempts a
        WHERE a.tenant_id = t.id AND a.finished_at > now() - make_interval(secs => $4::float8)
    ) u
    WHERE t.id IN (SELECT tenant_id FROM waiting)
)
SELECT w.id, w.tenant_id, w.kernel, w.priority, w.created_at, w.inputs, w.timeout_s,
       a.weight, a.quotas, a.in_flight, a.held, a.on_device, a.decayed, a.today
FROM waiting w JOIN asking a ON a.id = w.tenant_id
ORDER BY w.tenant_id, w.priority DESC, w.created_at, w.id
"""  # noqa: S608 (built from constants only)


async def waiting_loads(
    conn: Any,
    *,
    device: str,
    per_tenant: int,
    quota_defaults: QuotaDefaults,
    half_life_s: float,
) -> dict[uuid.UUID, TenantLoad]:
    """The load of every tenant with dispatchable jobs for ``device``, each with its up to
    ``per_tenant`` best candidates (priority, then age), in one round trip on the plain
    asyncpg connection ``conn``."""
    rows = await conn.fetch(
        WAITING_LOADS, device, per_tenant, half_life_s, max(86_400.0, 8 * half_life_s)
    )
    out: dict[uuid.UUID, TenantLoad] = {}
    for job_id, tenant_id, kernel, priority, created_at, inputs, timeout_s, *tenant in rows:
        t = out.get(tenant_id)
        if t is None:
            weight, quotas, flying, held, on_device, decayed, today = tenant
            t = out[tenant_id] = tenant_load(
                tenant_id=tenant_id,
                weight=weight,
                stored_quotas=orjson.loads(quotas),
                quota_defaults=quota_defaults,
                in_flight=flying,
                usage_s=float(decayed),
                cpu_today_s=float(today),
                held_s=float(held),
            )
            t.on_device = on_device
        names = () if inputs == "{}" else tuple(sorted(set(orjson.loads(inputs).values())))
        t.candidates.append(
            Candidate(job_id, tenant_id, kernel, priority, created_at, names, float(timeout_s))
        )
    return out


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
