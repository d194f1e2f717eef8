"""Usage accounting, read from its one source, the attempts (``attempt_records``:
``job_attempts`` and the chunks' ``chunk_attempts``, ``shared.jobs.attempts``), by
``GET /v1/usage``, ``GET /v1/tenant`` and the admin view.

An attempt counts in the window in which it ended (``finished_at``). ``group_by`` splits
the CPU and GPU seconds of the window by the job's kernel, by label (a job counts once in
the group of each ``key:value`` label it has; jobs without labels form the group whose key
is null), or by UTC day. ``GET /v1/tenant``'s use of ``cpu_seconds_per_day`` is read from the
hourly ``usage_hours`` buckets, the figure the scheduler holds the budget to.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Select, func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Job, JobArray, Migration, Tenant
from shared.jobs.arrays import COUNT_COLUMNS
from shared.jobs.attempts import AttemptRecord
from shared.jobs.states import JobState
from shared.jobs.usage import IN_FLIGHT, cpu_today_sql, waiting_jobs_sql
from shared.storage.quota import reserved_bytes, stored_bytes

GroupBy = Literal["kernel", "label", "day"]


@dataclass(frozen=True)
class Window:
    """``[since, until)``; an open end is unbounded."""

    since: datetime | None = None
    until: datetime | None = None


def _attempts(tenant_id: uuid.UUID, window: Window) -> Select[Any]:
    query = select(AttemptRecord).where(AttemptRecord.tenant_id == tenant_id)
    if window.since is not None:
        query = query.where(AttemptRecord.finished_at >= window.since)
    if window.until is not None:
        query = query.where(AttemptRecord.finished_at < window.until)
    return query


async def usage_of(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    window: Window | None = None,
    group_by: GroupBy | None = None,
) -> dict[str, Any]:
    """CPU and GPU seconds of the attempts that ended in ``window``, the jobs created in it
    per state, the bytes stored now (every copy on every tier) and the bytes moved by
    migrations created in it."""
    window = window or Window()
    attempts = _attempts(tenant_id, window).subquery()
    cpu, gpu = (
        await session.execute(
            select(
                func.coalesce(func.sum(attempts.c.cpu_seconds), 0.0),
                func.coalesce(func.sum(attempts.c.gpu_seconds), 0.0),
            )
        )
    ).one()
    usage: dict[str, Any] = {
        "cpu_seconds": float(cpu),
        "gpu_seconds": float(gpu),
        "jobs": await _jobs_per_state(session, tenant_id, window),
        "storage_bytes": await stored_bytes(session=session, tenant_id=tenant_id),
        "bytes_moved": await _bytes_moved(session, tenant_id, window),
        "since": window.since,
        "until": window.until,
        "group_by": group_by,
        "groups": None,
    }
    if group_by is not None:
        usage["groups"] = await _groups(session, tenant_id, window, group_by)
    return usage


async def _jobs_per_state(
    session: AsyncSession, tenant_id: uuid.UUID, window: Window
) -> dict[str, int]:
    """The tenant's jobs by state, each element of an array one job: the rows of jobs that
    are neither arrays nor elements, plus the arrays' counts (which hold every element,
    with a row or not yet; an element has its array's ``created_at``)."""
    created = [Job.created_at >= window.since] if window.since is not None else []
    created += [Job.created_at < window.until] if window.until is not None else []
    query = select(Job.state, func.count()).where(
        Job.tenant_id == tenant_id, Job.array_id.is_(None), ~Job.is_array, *created
    )
    states = {state: int(n) for state, n in await session.execute(query.group_by(Job.state))}
    columns = [getattr(JobArray, COUNT_COLUMNS[s]) for s in JobState]
    sums = (
        await session.execute(
            select(*(func.coalesce(func.sum(c), 0) for c in columns))
            .join(Job, Job.id == JobArray.job_id)
            .where(JobArray.tenant_id == tenant_id, *created)
        )
    ).one()
    return {s.value: states.get(s.value, 0) + int(n) for s, n in zip(JobState, sums, strict=True)}


async def _bytes_moved(session: AsyncSession, tenant_id: uuid.UUID, window: Window) -> int:
    query = select(func.coalesce(func.sum(Migration.bytes_copied), 0)).where(
        Migration.tenant_id == tenant_id
    )
    if window.since is not None:
        query = query.where(Migration.created_at >= window.since)
    if window.until is not None:
        query = query.where(Migration.created_at < window.until)
    return int(await session.scalar(query) or 0)


async def _groups(
    session: AsyncSession, tenant_id: uuid.UUID, window: Window, group_by: GroupBy
) -> list[dict[str, Any]]:
    a = _attempts(tenant_id, window).subquery()
    if group_by == "day":
        key: Any = func.to_char(func.timezone("UTC", a.c.finished_at), "YYYY-MM-DD")
        source: Any = select(a, key.label("key")).subquery()
    elif group_by == "kernel":
        source = select(a, Job.kernel.label("key")).join(Job, Job.id == a.c.job_id).subquery()
    else:
        label = func.jsonb_each_text(Job.labels).table_valued("key", "value").lateral("label")
        pair = label.c.key + literal(":") + label.c.value
        source = (
            select(a, pair.label("key"))
            .join(Job, Job.id == a.c.job_id)
            .outerjoin(label, literal(True))
            .subquery()
        )
    rows = await session.execute(
        select(
            source.c.key,
            func.sum(source.c.cpu_seconds),
            func.sum(source.c.gpu_seconds),
            func.count(func.distinct(source.c.job_id)),
        )
        .group_by(source.c.key)
        .order_by(source.c.key.asc().nulls_last())
    )
    return [
        {"key": k, "cpu_seconds": float(cpu), "gpu_seconds": float(gpu), "jobs": int(jobs)}
        for k, cpu, gpu, jobs in rows
    ]


# A tenant's use of each of its quotas now, in one round trip, as the scheduler counts it
# (the CPU seconds of the last 24 h by the hour, ``shared.jobs.usage``) and as a submission
# takes its place in the queue (``waiting_jobs_sql``: each element of an array one job). :t
# the tenant. (The text is built from constants only.)
_QUOTA_USE = text(
    f"""
SELECT
    (SELECT count(*) FROM jobs WHERE tenant_id = :t AND {IN_FLIGHT}) AS in_flight,
    (SELECT coalesce(sum(timeout_s), 0)::float8 FROM jobs WHERE tenant_id = :t AND {IN_FLIGHT})
        AS held,
    {waiting_jobs_sql(":t")} AS waiting,
    {cpu_today_sql(":t")} AS cpu_day
"""  # noqa: S608
)


async def quota_use(
    *, session: AsyncSession, tenant_id: uuid.UUID, quotas: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each quota of the tenant (``quotas``: the effective ones) with what it counts now, as
    the limits count it: jobs in flight, jobs waiting, CPU seconds of the last 24 h (and the
    CPU seconds its jobs in flight hold), bytes stored (and reserved by writes in progress)."""
    row = (await session.execute(_QUOTA_USE, {"t": tenant_id})).one()
    return {
        "max_running_jobs": {"limit": quotas["max_running_jobs"], "used": int(row.in_flight)},
        "max_queued_jobs": {"limit": quotas["max_queued_jobs"], "used": int(row.waiting)},
        "cpu_seconds_per_day": {
            "limit": quotas["cpu_seconds_per_day"],
            "used": float(row.cpu_day),
            "held": float(row.held),
        },
        "storage_bytes": {
            "limit": quotas["storage_bytes"],
            "used": await stored_bytes(session=session, tenant_id=tenant_id),
            "held": await reserved_bytes(session=session, tenant_id=tenant_id),
        },
        "requests_per_second": {"limit": quotas["requests_per_second"]},
    }


async def usage_of_all(*, session: AsyncSession) -> list[dict[str, Any]]:
    tenants = (await session.execute(select(Tenant.id, Tenant.name).order_by(Tenant.name))).all()
    return [
        {"tenant_id": str(t.id), "name": t.name, **await usage_of(session=session, tenant_id=t.id)}
        for t in tenants
    ]
