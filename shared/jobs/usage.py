"""What a tenant has used, one definition for the scheduler's dispatch, ``GET /v1/usage`` and
``GET /v1/tenant``. The source is ``job_attempts``: one row per attempt, however it ended
(succeeded, failed, timed out, cancelled while running, handed back, or reaped after its
worker was lost), written in the transaction that ends the attempt and keyed by (job,
attempt), so each attempt's CPU seconds count exactly once; except the attempts of the
elements a chunk's flush records, which are entries of that flush's one ``chunk_attempts``
row (``shared.jobs.attempts``; ``attempt_records`` is the view of both).

``cpu_seconds_per_day`` is a budget over the last 24 h that jobs in flight draw on too: a job
in flight holds its ``timeout_s`` (the most its attempt may use) until its attempt ends and
its measured CPU seconds replace the hold. A job may start only while the CPU seconds of the
attempts that ended in the last 24 h plus the holds of the jobs in flight are under the
budget; so the budget is exceeded by at most the last job started, and never by jobs in
flight that nobody counted.

What the scheduler reads on every dispatch pass is not ``job_attempts`` but ``usage_hours``:
the attempts of each tenant summed by the hour (UTC) in which they ended, kept by triggers
on ``job_attempts`` and ``chunk_attempts`` in the statement that writes the attempt (so
once per attempt, whichever path writes it). A pass reads at most a day of hourly rows per
tenant, however many attempts the day had. Two consequences of the hour:

- "the last 24 h" is the current hour and the 24 before it (``DAY_FROM``): an attempt's CPU
  seconds leave the budget between 24 and 25 h after it ended, late rather than early, so
  the budget is never exceeded by the rounding;
- fair share's decayed usage is computed when it is read, bucket by bucket, as if a bucket's
  CPU seconds all ended at their CPU-weighted mean end in the hour (``decayed``). So the
  half-life stays a setting of the scheduler, read on every pass (a decayed figure stored
  by the trigger would fix it in the database), at the price of a bucket's spread: for a
  half-life of an hour or more the result is at most 6 % under the exact per-attempt sum.

``usage_hours`` rows are kept (24 a day per active tenant at most): the window of each read
skips the old ones through the (tenant_id, hour) key.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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


def waiting_jobs_sql(tenant: str, cap: str = "NULL") -> str:
    """SQL for how many jobs the tenant ``tenant`` (an SQL expression) has waiting, what
    ``max_queued_jobs`` counts: each element of an array is one job, with a row or not yet.
    It is the database function ``jobs_waiting`` (migration 0015), which the submissions'
    ``jobs_waiting_room`` counts with too: the waiting rows outside arrays (at most ``cap``),
    plus ``n_pending + n_queued`` of the tenant's arrays that are not final. An element with
    a row is in its array's counts, so it is counted there and never as a row as well."""
    return f"jobs_waiting({tenant}, {cap})"


# The window of ``cpu_seconds_per_day``.
DAY_S = 86_400.0
HOUR_S = 3600.0

# SQL: the first ``usage_hours`` bucket that ``cpu_seconds_per_day`` counts now (see above).
DAY_FROM = "date_trunc('hour', now() - interval '1 day', 'UTC')"


def day_from(now: datetime) -> datetime:
    """The first hour whose bucket ``cpu_seconds_per_day`` counts at ``now`` (``DAY_FROM``)."""
    start = (now - timedelta(seconds=DAY_S)).astimezone(UTC)
    return start.replace(minute=0, second=0, microsecond=0)


def cpu_today_sql(tenant: str) -> str:
    """SQL: the CPU seconds ``cpu_seconds_per_day`` counts now for the tenant id ``tenant``."""
    return (
        "(SELECT coalesce(sum(cpu_seconds), 0)::float8 FROM usage_hours"  # noqa: S608
        f" WHERE tenant_id = {tenant} AND hour >= {DAY_FROM})"
    )


# Decay exponents are capped: 0.5 ** 1000 is as good as nothing, and PostgreSQL's power()
# raises an error on underflow instead of returning 0.
MAX_HALVINGS = 1000.0


def decayed(*, cpu_s: float, moment_s: float, age_s: float, half_life_s: float) -> float:
    """A bucket's CPU seconds ``cpu_s`` decayed to now, ``age_s`` after the bucket's hour
    began: as if they all ended at their CPU-weighted mean end, ``moment_s / cpu_s`` into the
    hour (``usage_hours.cpu_moment_s``). For one attempt that is exact; for several it is
    under the sum of their own decays by at most a factor cosh(ln 2 / 2h), h the half-life in
    hours (6 % for an hour). ``decayed_sql`` is the same in SQL."""
    if cpu_s <= 0:
        return 0.0
    centre = min(max(moment_s / cpu_s, 0.0), HOUR_S)
    halvings = min(max(age_s - centre, 0.0) / half_life_s, MAX_HALVINGS)
    return cpu_s * math.pow(0.5, halvings)


def decayed_sql(h: str, half_life: str) -> str:
    """SQL: ``decayed`` of the ``usage_hours`` row ``h`` at now(), half-life ``half_life``
    seconds (SQL). Null for a bucket without CPU seconds (``sum`` skips it)."""
    centre = f"least(greatest({h}.cpu_moment_s / nullif({h}.cpu_seconds, 0), 0), {HOUR_S})"
    age = f"extract(epoch FROM now() - {h}.hour)::float8"
    return (
        f"CASE WHEN {h}.cpu_seconds > 0 THEN {h}.cpu_seconds * power(0.5::float8,"
        f" least(greatest({age} - {centre}, 0) / {half_life}, {MAX_HALVINGS})) END"
    )


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
    device: str | None = None,
    started_at: datetime | None = None,
    error: str | None = None,
) -> None:
    """The ``job_attempts`` row of an attempt that ended. Its key (job, attempt) keeps one
    row per attempt: a repeat (a redelivered report, a reaped attempt reported late) counts
    nothing. ``device``, ``started_at`` and ``error`` are what ``GET /v1/jobs/{id}/attempts``
    shows of it."""
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
            device=device,
            started_at=started_at,
            error=error,
        )
        .on_conflict_do_nothing()
    )


# What ``job_attempts.outcome`` says of an attempt whose worker was lost (its lease expired).
LOST = "LOST"
# ... and its ``error`` (as the job's, ``shared.jobs.proposals.reason_and_error``).
LOST_ERROR = "worker lost while running the job"


@dataclass(frozen=True)
class LostAttempt:
    """An attempt reaped after its worker was lost, charged ``held_s`` CPU seconds."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    attempt: int
    worker: str | None
    held_s: float
    device: str | None = None
    started_at: datetime | None = None


async def record_lost_attempts(session: AsyncSession, lost: Sequence[LostAttempt]) -> None:
    """The ``job_attempts`` rows of the attempts ``lost``, in one statement: the trigger
    that adds a statement's attempts to ``usage_hours`` locks their hours in (tenant, hour)
    order, which one statement per attempt (in job order) would not keep. A worker that
    comes back and reports an attempt later is fenced (the job is no longer RUNNING that
    attempt), and the primary key keeps one row per attempt, so each counts once."""
    if not lost:
        return
    await session.execute(
        insert(JobAttempt)
        .values(
            [
                {
                    "job_id": a.job_id,
                    "attempt": a.attempt,
                    "tenant_id": a.tenant_id,
                    "worker": a.worker,
                    "outcome": LOST,
                    "cpu_seconds": a.held_s,
                    "wall_seconds": a.held_s,
                    "device": a.device,
                    "started_at": a.started_at,
                    "error": LOST_ERROR,
                }
                for a in lost
            ]
        )
        .on_conflict_do_nothing()
    )
