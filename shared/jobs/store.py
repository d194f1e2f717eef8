"""The only code that writes ``jobs.state``. ``set_job_state`` locks the row, applies the
rules of ``states.decide`` and records the change in ``job_events``; callers own the
transaction (and stage any outbox events in it). A retry (RUNNING -> QUEUED) sets
``run_after`` and stages its own wake-up, ``job.retry`` through a delay queue.

The transitions every job takes have set-based forms here too, fixed SQL that applies the
same rules to many jobs in one statement: the scheduler's ``admit_pending`` (PENDING ->
QUEUED), and the worker's ``claim_queued`` (QUEUED -> RUNNING) and ``finish_attempts``
(RUNNING -> an outcome without retry rules, with the attempt's usage row and the
scheduler's wake-up). What they do not match takes ``set_job_state``.
tests/integration/test_state_paths.py runs each of them, and ``set_job_state``, from every
state and checks what they do against ``decide``.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Collection, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.locks import lock_row
from shared.db.models import Job, JobEvent
from shared.db.outbox import add_event
from shared.db.wakeup import FINISHED, notify_once
from shared.events import JobRetryDue, utcnow
from shared.jobs.proposals import (
    Claimed,
    Lost,
    Proposal,
    Report,
    Reported,
    reason_and_error,
    retryable,
)
from shared.jobs.row import Columns
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
    return await lock_row(session, Job, job_id, tenant_id=tenant_id)


async def set_job_state(
    session: AsyncSession,
    job_id: uuid.UUID,
    proposal: Proposal,
    *,
    tenant_id: uuid.UUID | None = None,
) -> Transition:
    """Lock the job, decide, apply. A ``Reported`` or ``Lost`` attempt counts only while the
    job is RUNNING that attempt: the report of a superseded attempt changes nothing. What
    the set-based forms below do not match comes here, which explains the refusal or applies
    the rules they leave out (retries)."""
    job = await lock_job(session, job_id, tenant_id=tenant_id)
    current = JobState(job.state)
    if (
        isinstance(proposal, Reported | Lost)
        and current not in FINAL
        and (current is not JobState.RUNNING or proposal.attempt != job.attempts)
    ):
        refused = Decision(None, f"attempt {proposal.attempt} is not running (superseded)")
        return Transition(job, current, refused)
    # a preemption or a drain (this one, and those before) is no attempt of the retry rule
    handing_back = int(isinstance(proposal, Reported) and bool(proposal.report.handed_back))
    decision = decide(
        current,
        proposal.state,
        attempts=job.attempts - job.preemptions - handing_back,  # those use no retry
        max_retries=job.max_retries,
        retryable=retryable(proposal),
    )
    if decision.state is None:
        return Transition(job, current, decision)
    now = utcnow()
    reason, error = reason_and_error(proposal)
    _apply(job, current, decision.state, proposal, error=error, now=now)
    job.state_reason = reason or decision.reason or None
    await _record_change(session, job, current, proposal, error=error, now=now)
    await session.flush()
    JOB_TRANSITIONS.labels(decision.state.value).inc()
    return Transition(job, current, decision)


async def _record_change(
    session: AsyncSession,
    job: Job,
    previous: JobState,
    proposal: Proposal,
    *,
    error: str | None,
    now: datetime,
) -> None:
    """The change's ``job_events`` row, and a retry's wake-up once its backoff is over."""
    await session.execute(
        insert(JobEvent).values(
            job_id=job.id,
            tenant_id=job.tenant_id,
            attempt=job.attempts,
            from_state=previous.value,
            to_state=job.state,
            reason=job.state_reason or error,
            worker=proposal.worker if isinstance(proposal, Claimed | Reported) else None,
        )
    )
    if job.state == JobState.QUEUED and previous is JobState.RUNNING and job.run_after:
        delay_ms = int((job.run_after - now).total_seconds() * 1000) + WAKE_MARGIN_MS
        await add_event(
            session,
            JobRetryDue(
                tenant_id=job.tenant_id, job_id=job.id, attempt=job.attempts, delay_ms=delay_ms
            ),
        )


def _apply(
    job: Job,
    current: JobState,
    new: JobState,
    proposal: Proposal,
    *,
    error: str | None,
    now: datetime,
) -> None:
    """The columns of ``new`` (``decide``'s answer to ``proposal``) on the locked row."""
    job.state = new.value
    job.updated_at = now
    if new is JobState.QUEUED:
        job.dispatched_at = None
        job.assigned_device = None
        job.lease_expires_at = None
        if current is JobState.PENDING:
            job.queued_at = now
        elif isinstance(proposal, Reported) and proposal.report.handed_back:
            # preempted or drained from its checkpoint: queued again at once, no retry used
            job.worker = None
            job.error = None
            job.preemptions += 1
        else:  # a retry: back off before the next attempt
            job.worker = None
            job.error = error
            job.run_after = now + timedelta(seconds=DEFAULT_RETRY.delay(job.attempts))
    elif isinstance(proposal, Claimed):  # RUNNING, the one proposal that reaches it
        job.attempts += 1
        job.worker = proposal.worker
        job.started_at = now
        job.error = None
        job.lease_expires_at = now + timedelta(seconds=proposal.lease_s)
        job.progress = None  # the new attempt's, once it reports
    else:  # final
        job.finished_at = now
        job.lease_expires_at = None
        job.error = error
        job.result = proposal.report.result if isinstance(proposal, Reported) else None
        if new is JobState.SUCCEEDED:
            job.progress = 1.0
        if isinstance(proposal, Reported):
            job.worker = proposal.worker


# --- The transitions every job takes, set-based ------------------------------------------
#
# Fixed SQL with ``$n`` parameters, run either on a plain asyncpg connection
# (``shared.db.raw``: the scheduler's dispatch pass, the worker's group commits) or
# inside a SQLAlchemy session's transaction (``session_fetch``: the same text, through the
# driver). One statement per batch of jobs: the UPDATE locks and changes the rows and the
# CTEs append what goes with each change, so a batch commits whole or not at all.

Row = Sequence[Any]


class Fetch(Protocol):
    """Runs one statement with positional parameters and returns its rows."""

    def __call__(self, sql: str, /, *args: Any) -> Awaitable[Sequence[Row]]: ...


def session_fetch(session: AsyncSession) -> Fetch:
    """``Fetch`` inside ``session``'s transaction (SQLAlchemy's asyncpg dialect passes ``$n``
    parameters through to the driver as they are)."""

    async def fetch(sql: str, /, *args: Any) -> Sequence[Row]:
        conn = await session.connection()
        return (await conn.exec_driver_sql(sql, args)).all()

    return fetch


@dataclass(frozen=True)
class Admitted:
    job_id: uuid.UUID
    tenant_id: uuid.UUID
    inputs: dict[str, Any]
    # the pinned inputs' checksums, ``{input: checksum}`` (migration 0024)
    pins: dict[str, Any] = field(default_factory=dict)


ADMIT_REASON = "waiting for a worker slot"

# The set-based form of PENDING -> QUEUED (``decide`` takes it without conditions)
# in one round trip: the oldest waiting jobs (rows locked by the UPDATE, those another
# scheduler holds skipped), with their ``job_events`` rows. An array's own row is PENDING
# until its first element has a row, and is never admitted: its state is its elements'.
# A job waiting on dependencies (``deps_left > 0``, ``shared.jobs.deps``) is not admitted.
# $1 how many, $2 the reason.
_ADMIT_PENDING = """
WITH picked AS (
    SELECT id FROM jobs WHERE state = 'PENDING' AND NOT is_array AND deps_left = 0
    ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
), admitted AS (
    UPDATE jobs SET state = 'QUEUED', queued_at = now(), updated_at = now(), state_reason = $2
    FROM picked WHERE jobs.id = picked.id
    RETURNING jobs.id, jobs.tenant_id, jobs.inputs::text AS inputs, jobs.pins::text AS pins
), history AS (
    INSERT INTO job_events (job_id, tenant_id, attempt, from_state, to_state, reason, at)
    SELECT id, tenant_id, 0, 'PENDING', 'QUEUED', $2, now() FROM admitted
)
SELECT id, tenant_id, inputs, pins FROM admitted
"""


async def admit_pending(fetch: Fetch, *, limit: int, reason: str = ADMIT_REASON) -> list[Admitted]:
    """PENDING -> QUEUED for up to ``limit`` waiting jobs, oldest first, in one statement
    (``fetch``: a plain asyncpg connection's ``fetch``, or ``session_fetch``)."""
    rows = await fetch(_ADMIT_PENDING, limit, reason)
    if rows:
        JOB_TRANSITIONS.labels(JobState.QUEUED.value).inc(len(rows))
    return [
        Admitted(r[0], r[1], orjson.loads(r[2]) if r[2] else {}, orjson.loads(r[3] or "{}"))
        for r in rows
    ]


# --- The worker's transitions ---------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A job a worker claimed (QUEUED -> RUNNING under its lease): what the attempt runs."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    attempt: int
    kernel: str
    params: dict[str, Any]
    inputs: dict[str, str]
    outputs: dict[str, str]
    timeout_s: int
    output_tier: str = "local"
    checkpoint_interval_s: int = 30  # 0: the kernel saves no checkpoints

    @classmethod
    def of(cls, job: Job) -> Claim:
        """The claim of a job that ``set_job_state`` moved to RUNNING."""
        return cls(**CLAIMED.attributes(job))


# Claim's fields are the job's columns of the same names, but for these two.
CLAIMED = Columns([f.name for f in fields(Claim)], renamed={"job_id": "id", "attempt": "attempts"})


# BY_ID_ONLY: the statements that change listed jobs find each row by its id (``pk_jobs``)
# and test its state as ``state || ''``, which no index on ``state`` can serve. With a plain
# ``state = 'QUEUED'`` the planner, whose estimate of a state's rows is whatever the last
# ANALYZE saw of a queue that fills and drains, planned the claim as a scan of every QUEUED
# row (``ix_jobs_active``) hashed against the listed ids: a claim cost the whole backlog
# (docs/BENCHMARKS.md, "Plans that read the backlog").
# ``_apply`` for QUEUED -> RUNNING, to every listed job that is QUEUED.
def _claim_ctes(ids: str, worker: str, now: str, lease: str) -> str:
    """The claim's CTEs, ``claimed`` (the jobs taken) and their history rows, with its
    parameters at the positions given (the ids, the worker, now, the lease's end)."""
    return f"""
    claimed AS (
        UPDATE jobs SET state = 'RUNNING', attempts = attempts + 1, worker = {worker},
                        started_at = {now}, updated_at = {now}, error = NULL,
                        state_reason = NULL, lease_expires_at = {lease}, progress = NULL
        FROM unnest({ids}::uuid[]) AS listed(id)
        -- by id alone (pk_jobs): ``state || ''`` is no condition an index on state can take
        -- (BY_ID_ONLY)
        WHERE jobs.id = listed.id AND jobs.state || '' = 'QUEUED'
        RETURNING jobs.*
    ), claimed_history AS (
        INSERT INTO job_events (job_id, tenant_id, attempt, from_state, to_state, worker, at)
        SELECT id, tenant_id, attempts, 'QUEUED', 'RUNNING', {worker}, {now} FROM claimed
    )"""  # noqa: S608 (parameter positions only)


CLAIM_QUEUED = f"""
    WITH {_claim_ctes("$1", "$2", "$3", "$4")}
    SELECT {CLAIMED.select()} FROM claimed
"""  # noqa: S608 (column names of the model only)


async def claim_queued(
    fetch: Fetch, job_ids: Collection[uuid.UUID], *, worker: str, lease_s: float
) -> dict[uuid.UUID, Claim]:
    """QUEUED -> RUNNING under a lease of ``lease_s`` held by ``worker``, for those of
    ``job_ids`` that are QUEUED, in one statement (a ``job_events`` row each). A job left
    out of the result is not QUEUED (taken, cancelled, finished, unknown): ask
    ``set_job_state`` why."""
    now = utcnow()
    # the rows are locked in the order listed (a nested loop over the list): by id, as the
    # reaper and admission lock theirs, so that batches do not deadlock
    ids = sorted(job_ids)
    rows = await fetch(CLAIM_QUEUED, ids, worker, now, now + timedelta(seconds=lease_s))
    if rows:
        JOB_TRANSITIONS.labels(JobState.RUNNING.value).inc(len(rows))
    claims = [Claim(**CLAIMED.decode(r)) for r in rows]
    return {c.job_id: c for c in claims}


@dataclass(frozen=True)
class Finish:
    """The report of one attempt of one job: what ``finish_attempts`` writes."""

    job_id: uuid.UUID
    tenant_id: uuid.UUID
    attempt: int
    report: Report

    @property
    def without_rules(self) -> bool:
        """An outcome that ``decide`` takes as it comes from RUNNING, retries left or not
        (tests/integration/test_state_paths.py holds this to ``decide``)."""
        r = self.report
        return r.state in _AS_REPORTED or (r.state is JobState.FAILED and not r.retryable)


_AS_REPORTED = frozenset({JobState.SUCCEEDED, JobState.TIMED_OUT, JobState.CANCELLED})

# ``_apply`` for RUNNING -> a final state, to every listed job still RUNNING the reported
# attempt (fencing), with the attempt's usage row (counted once) and one NOTIFY that wakes
# the scheduler (a slot is free), all in the one statement.
_FINISH_CTES = f"""report AS (
        SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[],
                             $6::float8[], $7::float8[])
            AS r(id, attempt, state, result, error, cpu_seconds, wall_seconds)
    ), job AS (
        UPDATE jobs SET state = report.state, updated_at = $8, finished_at = $8,
                        lease_expires_at = NULL, result = CAST(report.result AS jsonb),
                        error = report.error, state_reason = NULL, worker = $9,
                        progress = CASE WHEN report.state = 'SUCCEEDED' THEN 1.0
                                        ELSE jobs.progress END,
                        -- the receipt with the row: whole for a job without datasets, as
                        -- its trigger makes it (migrations 0022, 0023), which it then skips
                        -- (0025); else its CPU seconds, and the trigger adds the rest. The
                        -- usage row below then writes the job no second time.
                        receipt = CASE
                            WHEN report.state <> 'SUCCEEDED' THEN jobs.receipt
                            WHEN jobs.inputs <> '{{}}'::jsonb OR jobs.outputs <> '{{}}'::jsonb
                                THEN jsonb_build_object('cpu_seconds', report.cpu_seconds)
                            ELSE jsonb_build_object(
                                'kernel', jobs.kernel, 'kernel_version', w.software ->> 'stratus',
                                'params', jobs.params, 'device', jobs.assigned_device,
                                'inputs', '{{}}'::jsonb, 'outputs', '{{}}'::jsonb,
                                'software', coalesce(w.software - 'stratus', '{{}}'::jsonb),
                                'worker', $9::text, 'cpu_seconds', report.cpu_seconds) END
        FROM report LEFT JOIN workers w ON w.id = $9
        WHERE jobs.id = report.id AND jobs.state || '' = 'RUNNING'  -- BY_ID_ONLY
          AND jobs.attempts = report.attempt
        RETURNING jobs.id, jobs.tenant_id, jobs.attempts, report.state, report.error,
                  report.cpu_seconds, report.wall_seconds, jobs.assigned_device,
                  jobs.started_at
    ), history AS (
        INSERT INTO job_events (job_id, tenant_id, attempt, from_state, to_state, reason,
                                worker, at)
        SELECT id, tenant_id, attempts, 'RUNNING', state, error, $9, $8 FROM job
    ), usage AS (
        INSERT INTO job_attempts (job_id, attempt, tenant_id, worker, outcome, cpu_seconds,
                                  gpu_seconds, wall_seconds, device, started_at, error)
        SELECT id, attempts, tenant_id, $9, state, cpu_seconds, 0, wall_seconds,
               assigned_device, started_at, error FROM job
        ON CONFLICT DO NOTHING
    ), woke AS MATERIALIZED (
        {notify_once("job", FINISHED)}
    )"""  # noqa: S608 (the wake-up's fixed text only)

FINISH_ATTEMPTS = f"""
    WITH {_FINISH_CTES}
    SELECT id, state FROM job, woke
"""  # noqa: S608 (fixed text only)

# A job's record and the next job's claim in one statement: one round trip and one commit
# where a transaction of the two took four (BEGIN, the two, COMMIT). A worker writes them
# together whenever a slot's kernel ends while a dispatch waits for it (services.worker.batch).
# The record's parameters as in FINISH_ATTEMPTS ($8 is now for both, $9 the worker), then
# $10 the ids to claim and $11 the lease's end. Each UPDATE locks its rows in id order, as
# alone; the triggers on ``jobs`` see both in one transition table (one per statement), and
# tell the rows apart by id. One row per job claimed with the ids of the jobs recorded, or,
# with none claimed, one row of NULLs with them.
RECORD_AND_CLAIM = f"""
    WITH {_FINISH_CTES},
    {_claim_ctes("$10", "$9", "$8", "$11")}
    SELECT c.*, f.recorded
    FROM (SELECT array_agg(job.id) AS recorded FROM job, woke) AS f
    LEFT JOIN (SELECT {CLAIMED.select()} FROM claimed) AS c ON true
"""  # noqa: S608 (column names of the model only)


async def finish_attempts(fetch: Fetch, finishes: Sequence[Finish], *, worker: str) -> list[Finish]:
    """Apply each outcome (one per job) to its job if the job is still RUNNING that attempt
    and the outcome is ``without_rules``, with the attempt's usage row and the scheduler's
    wake-up, in one statement. Return the finishes it did not apply (retry
    rules to decide, a superseded attempt, a job cancelled meanwhile): ``set_job_state``
    decides those."""
    applicable = _applicable(finishes)
    if not applicable:
        return list(finishes)
    rows = await fetch(FINISH_ATTEMPTS, *_finish_args(applicable, utcnow(), worker))
    for r in rows:
        JOB_TRANSITIONS.labels(r[1]).inc()
    applied = {r[0] for r in rows}
    return [f for f in finishes if f.job_id not in applied or not f.without_rules]


async def record_and_claim(
    fetch: Fetch,
    finishes: Sequence[Finish],
    job_ids: Collection[uuid.UUID],
    *,
    worker: str,
    lease_s: float,
) -> tuple[dict[uuid.UUID, Claim], list[Finish]]:
    """``finish_attempts`` of ``finishes`` and ``claim_queued`` of ``job_ids`` in one
    statement (``RECORD_AND_CLAIM``): the claims, and the finishes not applied. No job may be
    in both (its claim commits before its record is made)."""
    applicable = _applicable(finishes)
    if not applicable:
        return await claim_queued(fetch, job_ids, worker=worker, lease_s=lease_s), list(finishes)
    if not job_ids:
        return {}, await finish_attempts(fetch, finishes, worker=worker)
    now = utcnow()
    rows = await fetch(
        RECORD_AND_CLAIM,
        *_finish_args(applicable, now, worker),
        sorted(job_ids),  # the lock order, as claim_queued
        now + timedelta(seconds=lease_s),
    )
    recorded = set(rows[0][-1] or ())  # the last column (each row has it)
    states = {f.job_id: f.report.state.value for f in applicable}
    for job_id in recorded:
        JOB_TRANSITIONS.labels(states[job_id]).inc()
    taken = [Claim(**CLAIMED.decode(r)) for r in rows if r[0] is not None]  # r[0]: job_id
    if taken:
        JOB_TRANSITIONS.labels(JobState.RUNNING.value).inc(len(taken))
    left = [f for f in finishes if f.job_id not in recorded or not f.without_rules]
    return {c.job_id: c for c in taken}, left


def _applicable(finishes: Sequence[Finish]) -> list[Finish]:
    """The finishes a set-based record applies, in the lock order (by id, as
    ``claim_queued``)."""
    return sorted((f for f in finishes if f.without_rules), key=lambda f: f.job_id)


def _finish_args(applicable: Sequence[Finish], now: datetime, worker: str) -> list[Any]:
    """``FINISH_ATTEMPTS``'s parameters $1-$9."""
    dumps = orjson.dumps
    return [
        [f.job_id for f in applicable],
        [f.attempt for f in applicable],
        [f.report.state.value for f in applicable],
        [None if f.report.result is None else dumps(f.report.result).decode() for f in applicable],
        [f.report.error for f in applicable],
        [f.report.cpu_seconds for f in applicable],
        [f.report.wall_seconds for f in applicable],
        now,
        worker,
    ]
