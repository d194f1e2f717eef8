"""What a tenant has used, one definition for the scheduler's dispatch, ``GET /v1/usage`` and
``GET /v1/tenant``. The source is ``job_attempts``: one row per attempt, however it ended
(succeeded, failed, timed out, cancelled while running, handed back, or reaped after its
worker was lost), written in the transaction that ends the attempt and keyed by (job,
attempt), so each attempt's CPU seconds count exactly once.

``cpu_seconds_per_day`` is a budget over the last 24 h that jobs in flight draw on too: a job
in flight holds its ``timeout_s`` (the most its attempt may use) until its attempt ends and
its measured CPU seconds replace the hold. A job may start only while the CPU seconds of the
attempts that ended in the last 24 h plus the holds of the jobs in flight are under the
budget; so the budget is exceeded by at most the last job started, and never by jobs in
flight that nobody counted.
"""

from __future__ import annotations

import uuid

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import JobAttempt

# SQL conditions on a ``jobs`` row (no alias): the job holds a worker slot or is on its way
# to one (RUNNING, or QUEUED and dispatched); it waits in the tenant's queue. An array's own
# row is neither (its state sums up its elements'); an element with a row is a job like any.
IN_FLIGHT = (
    "(NOT is_array AND (state = 'RUNNING' OR (state = 'QUEUED' AND dispatched_at IS NOT NULL)))"
)
WAITING = "(NOT is_array AND state IN ('PENDING', 'QUEUED'))"

# The window of ``cpu_seconds_per_day``.
DAY_S = 86_400.0


def cpu_budget_allows(*, used_today_s: float, held_s: float, per_day_s: float) -> bool:
    """Whether one more job may start under ``cpu_seconds_per_day``: what ended in the last
    24 h plus what the jobs in flight hold is under the budget."""
    return used_today_s + held_s < per_day_s


async def count_attempt(
    session: AsyncSession,
    *,
    job_id: uuid.UUID,
    tenant_id: uuid.UUID,
    attempt: int,
    worker: str | None,
    outcome: str,
    cpu_seconds: float,
    wall_seconds: float,
) -> None:
    """The ``job_attempts`` row of an attempt that ended. Its key (job, attempt) keeps one
    row per attempt: a repeat (a redelivered report, a reaped attempt reported late) counts
    nothing."""
    await session.execute(
        insert(JobAttempt)
        .values(
            job_id=job_id,
            attempt=attempt,
            tenant_id=tenant_id,
            worker=worker,
            outcome=outcome,
            cpu_seconds=cpu_seconds,
            wall_seconds=wall_seconds,
        )
        .on_conflict_do_nothing()
    )


# What ``job_attempts.outcome`` says of an attempt whose worker was lost (its lease expired).
LOST = "LOST"


async def record_lost_attempt(
    session: AsyncSession,
    *,
    job_id: uuid.UUID,
    tenant_id: uuid.UUID,
    attempt: int,
    worker: str | None,
    held_s: float,
) -> None:
    """The ``job_attempts`` row of an attempt reaped after its worker was lost, charged
    ``held_s`` CPU seconds. A worker that comes back and reports the attempt later is fenced
    (the job is no longer RUNNING that attempt), and the primary key keeps one row per
    attempt, so the attempt counts once."""
    await count_attempt(
        session,
        job_id=job_id,
        tenant_id=tenant_id,
        attempt=attempt,
        worker=worker,
        outcome=LOST,
        cpu_seconds=held_s,
        wall_seconds=held_s,
    )
