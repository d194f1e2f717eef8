"""Usage accounting: counted from ``job.finished`` events (once per attempt, whatever the
number of deliveries), read by ``GET /v1/usage`` and the admin view."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Dataset, Job, Migration, Tenant, UsageRecord
from shared.events import JobFinished
from shared.jobs.states import JobState

# One fixed statement for a whole batch (arrays, not a VALUES list whose length changes the
# statement): nothing to compile per batch, one round trip.
_RECORD_USAGE = """
    INSERT INTO usage_records (job_id, attempt, tenant_id, cpu_seconds, gpu_seconds, recorded_at)
    SELECT u.job_id, u.attempt, u.tenant_id, u.cpu, u.gpu, now()
    FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::float8[], $5::float8[])
         AS u(job_id, attempt, tenant_id, cpu, gpu)
    ON CONFLICT DO NOTHING
    RETURNING job_id
"""


async def record_usage(*, conn: Any, events: list[JobFinished]) -> int:
    """Insert one row per (job, attempt) on a plain asyncpg connection (``shared.db.raw``);
    a duplicate delivery inserts nothing. Returns the rows inserted."""
    rows = [e for e in events if e.tenant_id is not None and e.attempt > 0]
    if not rows:
        return 0
    inserted = await conn.fetch(
        _RECORD_USAGE,
        [e.job_id for e in rows],
        [e.attempt for e in rows],
        [e.tenant_id for e in rows],
        [e.cpu_seconds for e in rows],
        [e.gpu_seconds for e in rows],
    )
    return len(inserted)


async def usage_of(*, session: AsyncSession, tenant_id: uuid.UUID) -> dict[str, Any]:
    cpu, gpu = (
        await session.execute(
            select(
                func.coalesce(func.sum(UsageRecord.cpu_seconds), 0.0),
                func.coalesce(func.sum(UsageRecord.gpu_seconds), 0.0),
            ).where(UsageRecord.tenant_id == tenant_id)
        )
    ).one()
    counts = await session.execute(
        select(Job.state, func.count()).where(Job.tenant_id == tenant_id).group_by(Job.state)
    )
    states = {state: int(n) for state, n in counts}
    stored = await session.scalar(
        select(func.coalesce(func.sum(Dataset.size), 0)).where(Dataset.tenant_id == tenant_id)
    )
    moved = await session.scalar(
        select(func.coalesce(func.sum(Migration.bytes_copied), 0)).where(
            Migration.tenant_id == tenant_id
        )
    )
    return {
        "cpu_seconds": float(cpu),
        "gpu_seconds": float(gpu),
        "jobs": {s.value: int(states.get(s.value, 0)) for s in JobState},
        "storage_bytes": int(stored or 0),
        "bytes_moved": int(moved or 0),
    }


async def usage_of_all(*, session: AsyncSession) -> list[dict[str, Any]]:
    tenants = (await session.execute(select(Tenant.id, Tenant.name).order_by(Tenant.name))).all()
    return [
        {"tenant_id": str(t.id), "name": t.name, **await usage_of(session=session, tenant_id=t.id)}
        for t in tenants
    ]
