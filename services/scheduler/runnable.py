"""What may run now, and the loads of the tenants that ask: the inputs of the dispatch pass
and of the autoscaler's demand (``demand.pool_demand``).

``runnable_now`` is the one rule, as SQL both statements embed: a waiting job (``WAITING``)
may start now when it is due (not in a retry's backoff), not staging in its inputs and not
waiting on dependencies (``shared.jobs.deps.released``). A job
whose stage-in failed is runnable in this sense: the dispatch pass fails it. Quotas and
suspension act per tenant, on top of the rule (``fairshare.TenantLoad``).

The dispatch pass runs once per wake-up (every job event), so its query is fixed SQL on plain
asyncpg (``_CANDIDATES``): building it with SQLAlchemy cost more CPU than PostgreSQL spent
running it. The autoscaler's queries, once per interval, are SQLAlchemy expressions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.scheduler.fairshare import Candidate, TenantLoad
from shared.db.models import UsageHour
from shared.jobs.deps import released
from shared.jobs.usage import DAY_FROM, IN_FLIGHT, day_from, decayed_sql
from shared.settings import QuotaDefaults
from shared.storage.stagein import stage_in_failed, staging_in


def waiting(job: str) -> str:
    """SQL: the ``jobs`` row ``job`` waits to be dispatched: PENDING, or QUEUED and not sent
    to a device queue yet."""
    return f"({job}.state = 'PENDING' OR ({job}.state = 'QUEUED' AND {job}.dispatched_at IS NULL))"


def runnable_now(job: str) -> str:
    """SQL: the waiting ``jobs`` row ``job`` may start now (see the module's doc)."""
    return (
        f"(({job}.run_after IS NULL OR {job}.run_after <= now()) AND NOT {staging_in(job)}"
        f" AND {released(job)})"
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


# The dispatch pass's one query per device: every unsuspended tenant's best runnable jobs for
# the device (one index probe per tenant on ix_jobs_tenant_dispatchable, so a flooded queue
# costs no more than a short one), each with whether its stage-in failed, joined with what
# fair share needs of each tenant that has some: weight, stored quotas, jobs in flight
# (``shared.jobs.usage.IN_FLIGHT``: what max_running_jobs counts) with the CPU seconds they
# hold (their timeout_s) and how many are on this device, CPU seconds decayed by age with the
# half-life, and CPU seconds of the last 24 h (with the holds, what cpu_seconds_per_day
# limits). Both usages come from the tenant's hourly ``usage_hours`` buckets (at most a day's
# worth, or 8 half-lives' if longer), never from its attempts: see ``shared.jobs.usage``.
# Fixed text, prepared once per connection.
# $1 device, $2 jobs per tenant, $3 half-life (s), $4 how far back usage counts (s).
_CANDIDATES = f"""
WITH waiting AS (
    SELECT j.id, j.tenant_id, j.kernel, j.priority, j.created_at, j.timeout_s, j.failed,
           false AS chunk
    FROM tenants t
    CROSS JOIN LATERAL (
        SELECT id, tenant_id, kernel, priority, created_at, timeout_s,
               {stage_in_failed("jobs")} AS failed
        FROM jobs
        WHERE jobs.tenant_id = t.id AND state = 'QUEUED' AND dispatched_at IS NULL
          AND device IN ($1::text, 'any') AND {runnable_now("jobs")}
        ORDER BY priority DESC, created_at, id
        LIMIT $2
    ) j
    WHERE NOT t.suspended
    UNION ALL
    SELECT c.id, c.tenant_id, c.kernel, c.priority, c.created_at, c.timeout_s, false, true
    FROM tenants t
    CROSS JOIN LATERAL (
        SELECT ch.id, ch.tenant_id, p.kernel, p.priority, p.created_at, p.timeout_s
        FROM array_chunks ch JOIN jobs p ON p.id = ch.array_id
        WHERE ch.tenant_id = t.id AND ch.dispatched_at IS NULL AND ch.worker IS NULL
          AND p.device IN ($1::text, 'any')
        ORDER BY p.priority DESC, p.created_at, ch.id
        LIMIT $2
    ) c
    WHERE NOT t.suspended
), asking AS (
    SELECT t.id, t.weight, t.quotas::text AS quotas, f.in_flight + fc.n AS in_flight,
           f.held_s, f.on_device + fc.on_device AS on_device,
           u.decayed, u.today
    FROM tenants t
    CROSS JOIN LATERAL (
        SELECT count(*) AS in_flight, coalesce(sum(timeout_s), 0)::float8 AS held_s,
               count(*) FILTER (WHERE assigned_device = $1::text) AS on_device
        FROM jobs WHERE jobs.tenant_id = t.id AND {IN_FLIGHT}
    ) f
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, count(*) FILTER (WHERE ch.device = $1::text) AS on_device
        FROM array_chunks ch WHERE ch.tenant_id = t.id AND ch.device IS NOT NULL
    ) fc
    CROSS JOIN LATERAL (
        SELECT coalesce(sum({decayed_sql("h", "$3::float8")}), 0) AS decayed,
               coalesce(sum(h.cpu_seconds) FILTER (WHERE h.hour >= {DAY_FROM}), 0) AS today
        FROM usage_hours h
        WHERE h.tenant_id = t.id
          AND h.hour >= date_trunc('hour', now() - make_interval(secs => $4::float8), 'UTC')
    ) u
    WHERE t.id IN (SELECT tenant_id FROM waiting)
)
SELECT w.id, w.tenant_id, w.kernel, w.priority, w.created_at, w.timeout_s, w.failed,
       a.weight, a.quotas, a.in_flight, a.held_s, a.on_device, a.decayed, a.today, w.chunk
FROM waiting w JOIN asking a ON a.id = w.tenant_id
ORDER BY w.tenant_id, w.priority DESC, w.created_at, w.id
"""  # noqa: S608 (built from constants only)


@dataclass
class Waiting:
    """The dispatch pass's view of one device: the tenants that have runnable jobs for it,
    each with its best candidates, and the runnable jobs whose stage-in failed. A candidate
    whose id is in ``chunks`` is an array chunk (``shared.jobs.chunks``), one slot."""

    tenants: dict[uuid.UUID, TenantLoad] = field(default_factory=dict)
    stage_in_failed: list[uuid.UUID] = field(default_factory=list)
    chunks: set[uuid.UUID] = field(default_factory=set)


async def candidates(
    conn: Any,
    *,
    device: str,
    per_tenant: int,
    quota_defaults: QuotaDefaults,
    half_life_s: float,
) -> Waiting:
    """The load of every tenant with runnable jobs for ``device``, each with its up to
    ``per_tenant`` best candidates (priority, then age), in one round trip on the plain
    asyncpg connection ``conn``."""
    rows = await conn.fetch(
        _CANDIDATES, device, per_tenant, half_life_s, max(86_400.0, 8 * half_life_s)
    )
    out = Waiting()
    for job_id, tenant_id, kernel, priority, created_at, timeout_s, failed, *tenant, chunk in rows:
        t = out.tenants.get(tenant_id)
        if t is None:
            weight, quotas, flying, held, on_device, decayed, today = tenant
            t = out.tenants[tenant_id] = tenant_load(
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
        if chunk:
            out.chunks.add(job_id)
        if failed:
            out.stage_in_failed.append(job_id)
        else:
            t.candidates.append(
                Candidate(job_id, tenant_id, kernel, priority, created_at, float(timeout_s))
            )
    return out


async def cpu_today(
    *, session: AsyncSession, tenant_ids: list[uuid.UUID], now: datetime
) -> dict[uuid.UUID, float]:
    """CPU seconds in the last 24 h per tenant (what ``cpu_seconds_per_day`` limits), from
    the hourly buckets as the dispatch pass counts them (``shared.jobs.usage.day_from``)."""
    if not tenant_ids:
        return {}
    rows = await session.execute(
        select(UsageHour.tenant_id, func.sum(UsageHour.cpu_seconds))
        .where(UsageHour.tenant_id.in_(tenant_ids), UsageHour.hour >= day_from(now))
        .group_by(UsageHour.tenant_id)
    )
    return {r[0]: float(r[1] or 0.0) for r in rows}
