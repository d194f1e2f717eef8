"""``set_job_state``: the only code that writes ``jobs.state``. It locks the row, applies the
rules of ``states.decide`` and records the change in ``job_events``; callers own the
transaction (and stage any outbox events in it). A retry (RUNNING -> QUEUED) sets
``run_after`` and stages its own wake-up, ``job.retry`` through a delay queue."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Job, JobEvent
from shared.db.outbox import add_event
from shared.errors import NotFound
from shared.events import JobRetryDue, utcnow
from shared.jobs.states import FINAL, Decision, JobState, RetryPolicy, decide
from shared.telemetry import JOB_TRANSITIONS

DEFAULT_RETRY = RetryPolicy(jitter=0.2)
# The wake-up comes this much after ``run_after``, so that the dispatch pass it starts finds
# the job due (the database's clock may run a little behind this process').
WAKE_MARGIN_MS = 100


@dataclass(frozen=True)
class Transition:
    job: Job
    previous: JobState
    decision: Decision

    @property
    def accepted(self) -> bool:
        return self.decision.accepted

    @property
    def state(self) -> JobState:
        return JobState(self.job.state)


async def lock_job(
    session: AsyncSession, job_id: uuid.UUID, *, tenant_id: uuid.UUID | None = None
) -> Job:
    query = (
        select(Job)
        .where(Job.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    job = (await session.execute(query)).scalar_one_or_none()
    if job is None:
        raise NotFound("job not found")
    return job


async def set_job_state(
    session: AsyncSession,
    job_id: uuid.UUID,
    proposed: JobState,
    *,
    tenant_id: uuid.UUID | None = None,
    attempt: int | None = None,
    worker: str | None = None,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    reason: str | None = None,
    retryable: bool = True,
    lease_s: float | None = None,
    retry_policy: RetryPolicy = DEFAULT_RETRY,
) -> Transition:
    """Lock the job, decide, apply. ``attempt`` fences reports from a superseded attempt.

    The two transitions every job takes (a worker's claim, QUEUED -> RUNNING, and an outcome
    without retry rules, RUNNING -> SUCCEEDED / TIMED_OUT / CANCELLED for the current attempt)
    first try one conditional ``UPDATE … RETURNING`` (the row lock is the UPDATE's); anything
    it does not match takes the general path below, which explains the refusal.
    """
    if tenant_id is None and reason is None:
        fast = await _fast_path(
            session,
            job_id,
            proposed,
            attempt=attempt,
            worker=worker,
            result=result,
            error=error,
            lease_s=lease_s,
        )
        if fast is not None:
            return fast
    job = await lock_job(session, job_id, tenant_id=tenant_id)
    current = JobState(job.state)
    if attempt is not None and attempt != job.attempts and current not in FINAL:
        return Transition(job, current, Decision(None, f"attempt {attempt} was superseded"))
    decision = decide(
        current,
        proposed,
        attempts=job.attempts,
        max_retries=job.max_retries,
        retryable=retryable,
    )
    if decision.state is None:
        return Transition(job, current, decision)
    now = utcnow()
    _apply(
        job,
        current,
        decision.state,
        now=now,
        worker=worker,
        result=result,
        error=error,
        reason=reason or decision.reason or None,
        lease_s=lease_s,
        retry_policy=retry_policy,
    )
    await session.execute(
        insert(JobEvent).values(
            job_id=job.id,
            attempt=job.attempts,
            from_state=current.value,
            to_state=decision.state.value,
            reason=job.state_reason or error,
            worker=worker,
        )
    )
    if decision.state is JobState.QUEUED and current is JobState.RUNNING and job.run_after:
        delay_ms = int((job.run_after - now).total_seconds() * 1000) + WAKE_MARGIN_MS
        await add_event(
            session,
            JobRetryDue(
                tenant_id=job.tenant_id, job_id=job.id, attempt=job.attempts, delay_ms=delay_ms
            ),
        )
    await session.flush()
    JOB_TRANSITIONS.labels(decision.state.value).inc()
    return Transition(job, current, decision)


def _apply(
    job: Job,
    current: JobState,
    new: JobState,
    *,
    now: datetime,
    worker: str | None,
    result: dict[str, Any] | None,
    error: str | None,
    reason: str | None,
    lease_s: float | None,
    retry_policy: RetryPolicy,
) -> None:
    job.state = new.value
    job.updated_at = now
    job.state_reason = reason
    if new is JobState.QUEUED:
        job.dispatched_at = None
        job.assigned_device = None
        job.lease_expires_at = None
        if current is JobState.PENDING:
            job.queued_at = now
        else:  # a retry: back off before the next attempt
            job.worker = None
            job.error = error
            job.run_after = now + timedelta(seconds=retry_policy.delay(job.attempts))
    elif new is JobState.RUNNING:
        job.attempts += 1
        job.worker = worker
        job.started_at = now
        job.error = None
        job.lease_expires_at = now + timedelta(seconds=lease_s or 30.0)
    else:  # final
        job.finished_at = now
        job.lease_expires_at = None
        job.result = result
        job.error = error
        if worker is not None:
            job.worker = worker


@dataclass(frozen=True)
class Admitted:
    job_id: uuid.UUID
    tenant_id: uuid.UUID
    inputs: dict[str, Any]


_ADMIT = decide(JobState.PENDING, JobState.QUEUED, attempts=0, max_retries=0)
assert _ADMIT.state is JobState.QUEUED  # the set-based form below relies on this rule

_ADMIT_PENDING = text(
    """
    WITH picked AS (
        SELECT id FROM jobs WHERE state = 'PENDING'
        ORDER BY created_at, id LIMIT :limit FOR UPDATE SKIP LOCKED
    )
    UPDATE jobs SET state = 'QUEUED', queued_at = :now, updated_at = :now,
                    state_reason = :reason
    FROM picked WHERE jobs.id = picked.id
    RETURNING jobs.id, jobs.tenant_id, jobs.inputs
    """
)


async def admit_pending(
    session: AsyncSession, *, limit: int, reason: str = "waiting for a worker slot"
) -> list[Admitted]:
    """PENDING -> QUEUED for up to ``limit`` waiting jobs, oldest first, in one statement:
    the set-based form of ``set_job_state`` for the one transition that has no conditions
    (rows locked by the UPDATE, history appended, other schedulers skip locked rows)."""
    now = utcnow()
    rows = (
        await session.execute(_ADMIT_PENDING, {"limit": limit, "now": now, "reason": reason})
    ).all()
    if rows:
        await session.execute(
            insert(JobEvent),
            [
                {
                    "job_id": r.id,
                    "attempt": 0,
                    "from_state": "PENDING",
                    "to_state": "QUEUED",
                    "reason": reason,
                    "at": now,
                }
                for r in rows
            ],
        )
        JOB_TRANSITIONS.labels("QUEUED").inc(len(rows))
    return [Admitted(r.id, r.tenant_id, r.inputs or {}) for r in rows]


_JOB_COLUMNS = ", ".join(c.name for c in Job.__table__.columns)

# The column list comes from the ORM model, never from input.
_CLAIM = text(
    f"""
    WITH job AS (
        UPDATE jobs SET state = 'RUNNING', attempts = attempts + 1, worker = :worker,
                        started_at = :now, updated_at = :now, error = NULL,
                        state_reason = NULL, lease_expires_at = :lease
        WHERE id = :id AND state = 'QUEUED'
        RETURNING {_JOB_COLUMNS}
    ), history AS (
        INSERT INTO job_events (job_id, attempt, from_state, to_state, worker, at)
        SELECT id, attempts, 'QUEUED', 'RUNNING', :worker, :now FROM job
    )
    SELECT * FROM job
    """  # noqa: S608
).columns(*Job.__table__.columns)

_FINISH = text(
    f"""
    WITH job AS (
        UPDATE jobs SET state = :state, updated_at = :now, finished_at = :now,
                        lease_expires_at = NULL, result = CAST(:result AS jsonb),
                        error = :error, state_reason = NULL,
                        worker = COALESCE(:worker, worker)
        WHERE id = :id AND state = 'RUNNING' AND attempts = :attempt
        RETURNING {_JOB_COLUMNS}
    ), history AS (
        INSERT INTO job_events (job_id, attempt, from_state, to_state, reason, worker, at)
        SELECT id, attempts, 'RUNNING', :state, :error, :worker, :now FROM job
    )
    SELECT * FROM job
    """  # noqa: S608
).columns(*Job.__table__.columns)

_FAST_FINAL = frozenset({JobState.SUCCEEDED, JobState.TIMED_OUT, JobState.CANCELLED})


async def _fast_path(
    session: AsyncSession,
    job_id: uuid.UUID,
    proposed: JobState,
    *,
    attempt: int | None,
    worker: str | None,
    result: dict[str, Any] | None,
    error: str | None,
    lease_s: float | None,
) -> Transition | None:
    now = utcnow()
    if proposed is JobState.RUNNING and attempt is None and worker is not None:
        previous = JobState.QUEUED
        row = (
            await session.execute(
                _CLAIM,
                {
                    "id": job_id,
                    "worker": worker,
                    "now": now,
                    "lease": now + timedelta(seconds=lease_s or 30.0),
                },
            )
        ).first()
    elif proposed in _FAST_FINAL and attempt is not None:
        previous = JobState.RUNNING
        row = (
            await session.execute(
                _FINISH,
                {
                    "id": job_id,
                    "state": proposed.value,
                    "now": now,
                    "attempt": attempt,
                    "result": None if result is None else orjson.dumps(result).decode(),
                    "error": error,
                    "worker": worker,
                },
            )
        ).first()
    else:
        return None
    if row is None:
        return None
    JOB_TRANSITIONS.labels(proposed.value).inc()
    return Transition(Job(**row._mapping), previous, Decision(proposed))
