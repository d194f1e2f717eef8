"""Worker pools as every service counts them: which pools there are, when a worker is live,
and the jobs each worker runs (the scheduler's autoscaler and ``GET /v1/admin/pools``)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Job, Worker
from shared.jobs.states import JobState

POOLS = ("cpu", "cuda")  # a pool is the workers of one device
# A worker whose last heartbeat is older than this is not counted (the scheduler's default
# ``STRATUS_WORKER_TTL_S``; workers heartbeat well within it).
WORKER_TTL_S = 15.0


def heartbeat_fresh(now: datetime, ttl_s: float = WORKER_TTL_S) -> ColumnElement[bool]:
    """The worker heartbeat within ``ttl_s`` of ``now``."""
    return Worker.heartbeat_at > now - timedelta(seconds=ttl_s)


async def running_per_worker(*, session: AsyncSession) -> dict[str, int]:
    """RUNNING jobs per worker name (workers that run none are absent)."""
    rows = await session.execute(
        select(Job.worker, func.count())
        .where(Job.state == JobState.RUNNING.value, Job.worker.is_not(None))
        .group_by(Job.worker)
    )
    return {str(w): int(n) for w, n in rows}
