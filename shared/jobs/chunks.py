"""Array chunks: an array's elements dispatched, claimed and recorded many at a time.

An array whose elements read no datasets and write no outputs is run in *chunks*: an
``array_chunks`` row names a contiguous index range, ``[first_index, first_index + n)``,
that travels as one message (``ChunkDispatched``), is claimed under one lease and is
recorded set-based, one statement per flush. An element of a chunk has no ``jobs`` row until
it ends: the flush inserts it in its final state, and the attempts of all the elements it
inserted in one ``chunk_attempts`` row (the usage source with ``job_attempts``,
``shared.jobs.attempts``), so an element costs one row write and a flush one more; the flush
that records the last element deletes the chunk. No ``job_events`` row and no message per
element: a flush that records elements adds one ``job_events`` row of kind ``progress`` for
the array (``counts``: the array's counts as the flush leaves them), so a subscriber of the
events feed sees the array's counts move.

Counts. ``job_arrays``' ``n_*`` stay exact: a chunk's elements without a row are counted
QUEUED while the chunk waits and RUNNING while a worker holds it. The counts' trigger
(migration 0013) takes an inserted element row as leaving ``n_pending``; the statements here
move the chunk's elements between the counts themselves so that the sums hold (a recorded
element goes back to ``n_pending`` first, for the trigger to take it from there).

Fencing. ``attempt`` counts claims; a flush counts only while the chunk is held by the same
worker at the same attempt. A lost worker's chunk is re-queued by the scheduler's reaper
(``requeue_expired``), which clears ``worker``: the old worker's flushes are then fenced.
A repeated flush inserts nothing (``ON CONFLICT`` on the element's row).

Lock order: the chunk row, then its array's ``job_arrays`` row (as every element statement:
the row, then the array).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from shared.db.wakeup import FINISHED, notify_once
from shared.jobs.arrays import element_id, element_id_sql
from shared.jobs.states import JobState
from shared.jobs.store import DEFAULT_RETRY, Fetch

# A chunk while nothing was measured yet, and the EWMA's weight of each flush's mean.
FIRST_CHUNK = 8
EWMA_WEIGHT = 0.3
RETRY_REASON = "retrying after a failure"
LOST_ERROR = "worker lost while running the job"


@dataclass(frozen=True)
class ElementRun:
    """What one element runs."""

    index: int
    job_id: uuid.UUID  # shared.jobs.arrays.element_id(array_id, index)
    params: dict[str, Any]  # params || overrides[i] || {index_param: i}


@dataclass(frozen=True)
class ChunkClaim:
    """A chunk a worker claimed: what it runs, and the claim's fencing token (``attempt``)."""

    chunk_id: uuid.UUID
    array_id: uuid.UUID
    tenant_id: uuid.UUID
    attempt: int
    kernel: str
    device: str  # the queue's device
    timeout_s: int  # per element
    max_retries: int
    elements: list[ElementRun]  # only those without a row yet (a re-run skips recorded ones)


@dataclass(frozen=True)
class ElementOutcome:
    """How one element's run ended. A FAILED ``retryable`` outcome with retries left is
    recorded as a plain QUEUED row (the regular per-job retry path takes it from there)."""

    index: int
    state: JobState  # SUCCEEDED | FAILED | TIMED_OUT | CANCELLED
    result: dict[str, Any] | None
    error: str | None
    retryable: bool
    cpu_seconds: float
    wall_seconds: float
    started_at: datetime
    finished_at: datetime


@dataclass(frozen=True)
class Flushed:
    recorded: int  # rows this flush inserted (a repeat of the same attempt: 0)
    cancelled: bool  # the array was cancelled: stop running, record the rest CANCELLED
    fenced: bool  # the chunk is no longer this worker's attempt: stop, drop results


def chunk_size(element_wall_s: float | None, *, target_s: float, most: int) -> int:
    """How many elements a chunk takes: enough for about ``target_s`` of work at the
    measured wall time of one element, between 1 and ``most``; ``FIRST_CHUNK`` while
    nothing is measured. (``CHUNK_SIZE_SQL`` is the same in SQL.)"""
    if element_wall_s is None:
        return max(1, min(FIRST_CHUNK, most))
    if element_wall_s <= 0:
        return most
    return max(1, min(most, int(target_s / element_wall_s)))


def chunk_size_sql(wall: str, target: str, most: str) -> str:
    """SQL for ``chunk_size`` of the expressions ``wall``, ``target`` and ``most``."""
    return (
        f"(CASE WHEN {wall} IS NULL THEN greatest(1, least({FIRST_CHUNK}, {most}))"
        f" WHEN {wall} <= 0 THEN {most}"
        f" ELSE greatest(1, least({most}, floor({target} / {wall})::int)) END)"
    )


# The elements of chunk ``c`` without a row: its indices less those that have one; of
# every row of ``c`` (``_TODO``), or of the row ``c`` of a lateral join (``_TODO_OF``).
_TODO_OF = """
    SELECT i FROM generate_series({c}.first_index, {c}.first_index + {c}.n - 1) AS i
    WHERE NOT EXISTS (SELECT 1 FROM jobs e WHERE e.array_id = {c}.array_id
                                             AND e.array_index = i)
"""
_TODO = "SELECT i FROM {c} CROSS JOIN LATERAL (" + _TODO_OF + ") t"  # noqa: S608
# Element ``i``'s params: the array ``a``'s over its parent ``p``'s (``element_of``). An
# ``overrides`` stored as JSON null (not SQL NULL) gives JSON null at every index: no override.
PARAMS = """(p.params
    || CASE WHEN jsonb_typeof(a.overrides -> i) = 'object' THEN a.overrides -> i
            ELSE '{}'::jsonb END
    || CASE WHEN a.index_param IS NULL THEN '{}'::jsonb
            ELSE jsonb_build_object(a.index_param, i) END)"""

# $1 chunk, $2 worker, $3 lease (s). Only an unclaimed chunk of an array not cancelled.
_CLAIM = f"""
WITH chunk AS (
    UPDATE array_chunks c SET attempt = c.attempt + 1, worker = $2,
        lease_expires_at = now() + make_interval(secs => $3::float8),
        dispatched_at = coalesce(c.dispatched_at, now()),
        device = coalesce(c.device, CASE WHEN p.device = 'cuda' THEN 'cuda' ELSE 'cpu' END)
    FROM job_arrays a JOIN jobs p ON p.id = a.job_id
    WHERE c.id = $1 AND c.worker IS NULL AND a.job_id = c.array_id AND NOT a.cancelled
    RETURNING c.*
), todo AS ({_TODO.format(c="chunk")}
), counted AS (
    UPDATE job_arrays a SET n_queued = a.n_queued - t.k, n_running = a.n_running + t.k
    FROM chunk, (SELECT count(*)::int AS k FROM todo) t
    WHERE a.job_id = chunk.array_id AND t.k > 0
)
SELECT chunk.id, chunk.array_id, chunk.tenant_id, chunk.attempt, p.kernel, chunk.device,
       p.timeout_s, p.max_retries,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(i, {PARAMS}) ORDER BY i), '[]')::text
        FROM todo) AS elements
FROM chunk JOIN jobs p ON p.id = chunk.array_id JOIN job_arrays a ON a.job_id = chunk.array_id
"""  # noqa: S608 (built from constants only)


async def claim_chunk(
    fetch: Fetch, chunk_id: uuid.UUID, *, worker: str, lease_s: float
) -> ChunkClaim | None:
    """Take chunk ``chunk_id`` for ``worker`` under a lease of ``lease_s`` (its elements
    without a row move from QUEUED to RUNNING); None when it is not to be run by this
    worker (taken, handed over to another, cancelled, done)."""
    rows = await fetch(_CLAIM, chunk_id, worker, lease_s)
    if not rows:
        return None
    r = rows[0]
    elements = [
        ElementRun(index=i, job_id=element_id(r[1], i), params=params)
        for i, params in orjson.loads(r[8])
    ]
    return ChunkClaim(
        chunk_id=r[0],
        array_id=r[1],
        tenant_id=r[2],
        attempt=r[3],
        kernel=r[4],
        device=r[5],
        timeout_s=r[6],
        max_retries=r[7],
        elements=elements,
    )


# The columns of an element's row, as materialise.py inserts them, in its final state (or
# QUEUED for a retry). ``{src}`` joins the chunk ``c``, its array ``a`` and parent ``p``,
# and gives the index ``i`` with the outcome's columns.
_ELEMENT_COLUMNS = """
    id, tenant_id, kernel, device, params, inputs, outputs, labels, output_tier, priority,
    timeout_s, max_retries, state, state_reason, attempts, assigned_device, worker, run_after,
    result, error, created_at, updated_at, queued_at, started_at, finished_at, is_array,
    array_id, array_index, progress
"""

# $1 chunk, $2 attempt, $3 worker, $4.. the outcomes (index, state, result, error,
# retryable, cpu, wall, started, finished), $13 last, $14 a retry's backoff (s).
_RECORD = f"""
WITH chunk AS (
    SELECT c.* FROM array_chunks c
    WHERE c.id = $1 AND c.attempt = $2 AND c.worker = $3
    FOR UPDATE
), outcome AS (
    SELECT * FROM unnest($4::int[], $5::text[], $6::text[], $7::text[], $8::bool[],
                         $9::float8[], $10::float8[], $11::timestamptz[], $12::timestamptz[])
        AS o(i, state, result, error, retry, cpu, wall, started, finished)
), inserted AS (
    INSERT INTO jobs ({_ELEMENT_COLUMNS}, receipt)
    SELECT {element_id_sql("p.id", "o.i")}, p.tenant_id, p.kernel, p.device, {PARAMS},
           p.inputs, p.outputs, p.labels, p.output_tier, p.priority, p.timeout_s,
           p.max_retries, CASE WHEN r.again THEN 'QUEUED' ELSE o.state END,
           CASE WHEN r.again THEN '{RETRY_REASON}' END, c.attempt,
           CASE WHEN NOT r.again THEN c.device END, CASE WHEN NOT r.again THEN c.worker END,
           CASE WHEN r.again THEN now() + make_interval(secs => $14::float8) END,
           CAST(o.result AS jsonb), o.error, p.created_at, now(), c.created_at, o.started,
           CASE WHEN NOT r.again THEN o.finished END, false, p.id, o.i,
           CASE WHEN o.state = 'SUCCEEDED' THEN 1.0 END,
           -- the receipt comes with the row, made here for the whole flush as the receipt's
           -- trigger makes it for one row (migrations 0022, 0023): a row that arrives with
           -- it skips the trigger (migration 0025). An element that names datasets gets
           -- only its CPU seconds, and the trigger adds the rest (their checksums). Either
           -- way the usage row below does not make the trigger write the row again.
           CASE WHEN o.state <> 'SUCCEEDED' THEN NULL
                WHEN p.inputs <> '{{}}'::jsonb OR p.outputs <> '{{}}'::jsonb
                    THEN jsonb_build_object('cpu_seconds', o.cpu)
                ELSE jsonb_build_object(
                    'kernel', p.kernel, 'kernel_version', w.software ->> 'stratus',
                    'params', {PARAMS}, 'device', c.device,
                    'inputs', '{{}}'::jsonb, 'outputs', '{{}}'::jsonb,
                    'software', coalesce(w.software - 'stratus', '{{}}'::jsonb),
                    'worker', c.worker, 'cpu_seconds', o.cpu) END
    FROM chunk c
    JOIN jobs p ON p.id = c.array_id
    JOIN job_arrays a ON a.job_id = c.array_id
    JOIN outcome o ON o.i >= c.first_index AND o.i < c.first_index + c.n
    LEFT JOIN workers w ON w.id = c.worker
    CROSS JOIN LATERAL (SELECT o.state = 'FAILED' AND o.retry AND c.attempt <= p.max_retries
                        AS again) r
    ORDER BY o.i
    ON CONFLICT DO NOTHING
    RETURNING id, tenant_id, attempts, array_index, state
), chunk_usage AS (  -- the attempt of every element inserted here, in one row
    INSERT INTO chunk_attempts (array_id, tenant_id, attempt, worker, device, first_index,
                                last_index, indices, outcomes, cpu_seconds, wall_seconds,
                                started_at, errors)
    SELECT c.array_id, c.tenant_id, c.attempt, $3, c.device, min(o.i), max(o.i),
           array_agg(o.i ORDER BY o.i), array_agg(o.state ORDER BY o.i),
           array_agg(o.cpu ORDER BY o.i), array_agg(o.wall ORDER BY o.i),
           array_agg(o.started ORDER BY o.i), array_agg(o.error ORDER BY o.i)
    FROM inserted n JOIN outcome o ON o.i = n.array_index CROSS JOIN chunk c
    GROUP BY c.array_id, c.tenant_id, c.attempt, c.device
), usage AS (
    INSERT INTO job_attempts (job_id, attempt, tenant_id, worker, outcome, cpu_seconds,
                              gpu_seconds, wall_seconds, device, started_at, error)
    -- the chunk's earlier attempts, lost with their workers: counted once, now
    SELECT n.id, k, n.tenant_id, NULL, 'LOST', 0, 0, 0, NULL, NULL, '{LOST_ERROR}'
    FROM inserted n CROSS JOIN generate_series(1, n.attempts - 1) AS k
    UNION ALL  -- elements the array's cancel ended while this attempt ran them: they ran
    SELECT e.id, e.attempts, e.tenant_id, $3, o.state, o.cpu, 0, o.wall, c.device, o.started,
           o.error
    FROM chunk c JOIN outcome o ON o.i >= c.first_index AND o.i < c.first_index + c.n
    JOIN jobs e ON e.array_id = c.array_id AND e.array_index = o.i
    WHERE e.state = 'CANCELLED' AND e.attempts = c.attempt
    ON CONFLICT DO NOTHING
), measured AS (
    SELECT (SELECT count(*)::int FROM inserted) AS k,
           (SELECT avg(o.wall) FROM outcome o JOIN inserted n ON n.array_index = o.i) AS m
), counted AS (
    UPDATE job_arrays a SET n_pending = a.n_pending + s.k, n_running = a.n_running - s.k,
        element_wall_s = CASE WHEN s.m IS NULL THEN a.element_wall_s
                              WHEN a.element_wall_s IS NULL THEN s.m
                              ELSE {1 - EWMA_WEIGHT} * a.element_wall_s + {EWMA_WEIGHT} * s.m
                         END
    FROM chunk, measured s
    WHERE a.job_id = chunk.array_id AND s.k > 0
    RETURNING a.*
), tally AS (  -- what the counts' trigger moves from n_pending at the statement's end
    SELECT count(*)::int AS k,
           count(*) FILTER (WHERE state = 'QUEUED')::int AS queued,
           count(*) FILTER (WHERE state = 'SUCCEEDED')::int AS succeeded,
           count(*) FILTER (WHERE state = 'FAILED')::int AS failed,
           count(*) FILTER (WHERE state = 'CANCELLED')::int AS cancelled,
           count(*) FILTER (WHERE state = 'TIMED_OUT')::int AS timed_out
    FROM inserted
), left_by AS (  -- the array's counts as the flush leaves them
    SELECT u.job_id, u.tenant_id, u.size, u.cancelled, u.n_pending - t.k AS pending,
           u.n_queued + t.queued AS queued, u.n_running AS running,
           u.n_succeeded + t.succeeded AS succeeded, u.n_failed + t.failed AS failed,
           u.n_cancelled + t.cancelled AS cancelled_n, u.n_timed_out + t.timed_out AS timed_out
    FROM counted u CROSS JOIN tally t
), progressed AS (  -- its progress event, with the counts and the state they give the array
    INSERT INTO job_events (job_id, tenant_id, attempt, from_state, to_state, kind, progress,
                            counts, worker, at)
    SELECT l.job_id, l.tenant_id, 0, p.state, d.state, 'progress',
           (l.succeeded + l.failed + l.cancelled_n + l.timed_out)::real / l.size,
           jsonb_build_object(
               'PENDING', l.pending, 'QUEUED', l.queued, 'RUNNING', l.running,
               'SUCCEEDED', l.succeeded, 'FAILED', l.failed, 'CANCELLED', l.cancelled_n,
               'TIMED_OUT', l.timed_out),
           $3, now()
    FROM left_by l JOIN jobs p ON p.id = l.job_id
    CROSS JOIN LATERAL (  -- as stratus_array_refresh (migration 0013)
        SELECT CASE WHEN l.pending = l.size THEN 'PENDING'
                    WHEN l.pending + l.queued + l.running > 0 THEN 'RUNNING'
                    WHEN l.succeeded = l.size THEN 'SUCCEEDED'
                    WHEN l.cancelled THEN 'CANCELLED'
                    ELSE 'FAILED' END AS state) d
), removed AS (
    DELETE FROM array_chunks d USING chunk c
    WHERE d.id = c.id AND $13::bool
      AND (SELECT count(*) FROM inserted)
          + (SELECT count(*) FROM jobs e WHERE e.array_id = c.array_id
             AND e.array_index >= c.first_index AND e.array_index < c.first_index + c.n)
          >= c.n
    RETURNING d.id
), woke AS MATERIALIZED (
    {notify_once("(SELECT id FROM inserted UNION ALL SELECT id FROM removed) AS ended", FINISHED)}
)
SELECT (SELECT count(*)::int FROM inserted), EXISTS (SELECT 1 FROM chunk),
       coalesce((SELECT a.cancelled FROM job_arrays a JOIN chunk ON a.job_id = chunk.array_id),
                true)
FROM woke
"""  # noqa: S608 (built from constants only)


async def record_elements(
    fetch: Fetch,
    claim: ChunkClaim,
    outcomes: Sequence[ElementOutcome],
    *,
    worker: str,
    last: bool,
) -> Flushed:
    """Record ``outcomes`` of ``claim``'s elements in one statement: each element's row in
    its final state (a retryable failure with retries left: QUEUED, backing off), their
    attempts in one ``chunk_attempts`` row, the counts moved, the chunk's measured wall
    time updated, and the scheduler woken when something ended. ``last``: every element
    was reported, the chunk row goes (call it once at the end, even with no outcomes).
    Fenced by (chunk, attempt, worker); an element that has its row already is left as it
    is (a repeated flush is a no-op)."""
    # one outcome per element, in index (= id) order: the order its rows are locked in
    os = sorted({o.index: o for o in outcomes}.values(), key=lambda o: o.index)
    dumps = orjson.dumps
    rows = await fetch(
        _RECORD,
        claim.chunk_id,
        claim.attempt,
        worker,
        [o.index for o in os],
        [o.state.value for o in os],
        [None if o.result is None else dumps(o.result).decode() for o in os],
        [o.error for o in os],
        [o.retryable for o in os],
        [o.cpu_seconds for o in os],
        [o.wall_seconds for o in os],
        [o.started_at for o in os],
        [o.finished_at for o in os],
        last,
        DEFAULT_RETRY.delay(claim.attempt),
    )
    recorded, owned, cancelled = rows[0]
    return Flushed(recorded=int(recorded), cancelled=bool(cancelled), fenced=not owned)


# $1 chunk, $2 attempt, $3 worker. The claim undone: not an attempt used.
_HAND_BACK = f"""
WITH chunk AS (
    UPDATE array_chunks c SET attempt = c.attempt - 1, worker = NULL, lease_expires_at = NULL,
        dispatched_at = NULL, device = NULL
    WHERE c.id = $1 AND c.attempt = $2 AND c.worker = $3
    RETURNING c.*
), todo AS ({_TODO.format(c="chunk")}
), counted AS (
    UPDATE job_arrays a SET n_queued = a.n_queued + t.k, n_running = a.n_running - t.k
    FROM chunk, (SELECT count(*)::int AS k FROM todo) t
    WHERE a.job_id = chunk.array_id AND t.k > 0
), woke AS MATERIALIZED (
    {notify_once("chunk", FINISHED)}
)
SELECT count(*) FROM chunk, woke
"""  # noqa: S608 (built from constants only)


async def hand_back(fetch: Fetch, claim: ChunkClaim, *, worker: str) -> None:
    """Return ``claim``'s chunk unfinished (a worker shutting down): its elements without a
    row are QUEUED again and the scheduler dispatches the chunk anew; the claim does not
    count as an attempt."""
    await fetch(_HAND_BACK, claim.chunk_id, claim.attempt, worker)


_EXTEND = """
UPDATE array_chunks SET lease_expires_at = now() + make_interval(secs => $3::float8)
WHERE id = ANY($1::uuid[]) AND worker = $2
RETURNING id
"""


async def extend_leases(
    fetch: Fetch, chunk_ids: Collection[uuid.UUID], *, worker: str, lease_s: float
) -> None:
    """Extend the leases of the chunks of ``chunk_ids`` that ``worker`` holds (its
    heartbeat)."""
    if chunk_ids:
        await fetch(_EXTEND, sorted(chunk_ids), worker, lease_s)


# The chunks of cancelled arrays that no live worker holds (unclaimed, or their lease
# expired): deleted, their elements without a row moved to ``n_cancelled`` (like the
# array's virtual elements, they stay without a row). $1 one array, or NULL for all.
_CANCEL = """
WITH gone AS (
    DELETE FROM array_chunks c USING job_arrays a
    WHERE a.job_id = c.array_id AND a.cancelled
      AND ($1::uuid IS NULL OR c.array_id = $1::uuid)
      AND (c.worker IS NULL OR c.lease_expires_at < now())
    RETURNING c.array_id, c.first_index, c.n, c.worker IS NOT NULL AS claimed
), todo AS (
    SELECT c.array_id, c.claimed FROM gone c CROSS JOIN LATERAL
        generate_series(c.first_index, c.first_index + c.n - 1) AS i
    WHERE NOT EXISTS (SELECT 1 FROM jobs e WHERE e.array_id = c.array_id
                                             AND e.array_index = i)
), counted AS (
    UPDATE job_arrays a SET n_queued = a.n_queued - s.q, n_running = a.n_running - s.r,
        n_cancelled = a.n_cancelled + s.q + s.r
    FROM (SELECT array_id, count(*) FILTER (WHERE NOT claimed)::int AS q,
                 count(*) FILTER (WHERE claimed)::int AS r
          FROM todo GROUP BY array_id) s
    WHERE a.job_id = s.array_id
)
SELECT DISTINCT array_id FROM gone
"""
_REFRESH = "SELECT stratus_array_refresh($1::uuid[])"


async def cancel_chunks(fetch: Fetch, array_id: uuid.UUID | None = None) -> int:
    """Drop the chunks of cancelled arrays (``array_id``'s, or every array's) that no live
    worker holds: their elements without a row become CANCELLED in the counts, and the
    arrays' states follow. A chunk still held learns of the cancel from its next flush
    (``Flushed.cancelled``). Returns how many arrays lost chunks."""
    rows = await fetch(_CANCEL, array_id)
    arrays = sorted(r[0] for r in rows)
    if arrays:
        await fetch(_REFRESH, arrays)
    return len(arrays)


# A lost worker's chunks (lease expired): re-queued for another claim (the next claim is
# the next attempt), or, once ``max_retries + 1`` attempts are used, their elements without
# a row recorded FAILED (worker lost) with a LOST usage row each. Chunks of cancelled
# arrays are left to ``cancel_chunks``. $1 the most chunks.
_EXPIRED = """
    SELECT c.id, c.array_id, c.first_index, c.n, c.attempt, c.worker, c.device,
           c.created_at, c.dispatched_at, p.max_retries
    FROM array_chunks c JOIN jobs p ON p.id = c.array_id
    JOIN job_arrays a ON a.job_id = c.array_id
    WHERE c.worker IS NOT NULL AND c.lease_expires_at < now() AND NOT a.cancelled
    ORDER BY c.id LIMIT $1
    FOR UPDATE OF c SKIP LOCKED
"""
_REQUEUE = f"""
WITH expired AS ({_EXPIRED}
), requeued AS (
    UPDATE array_chunks c SET worker = NULL, lease_expires_at = NULL, dispatched_at = NULL,
        device = NULL
    FROM expired e WHERE c.id = e.id AND e.attempt <= e.max_retries
    RETURNING c.*
), counted AS (
    UPDATE job_arrays a SET n_queued = a.n_queued + s.k, n_running = a.n_running - s.k
    FROM (SELECT requeued.array_id, count(*)::int AS k
          FROM requeued JOIN LATERAL ({_TODO_OF.format(c="requeued")}) t ON true
          GROUP BY requeued.array_id) s
    WHERE a.job_id = s.array_id
), failing AS (
    DELETE FROM array_chunks c USING expired e
    WHERE c.id = e.id AND e.attempt > e.max_retries
    RETURNING c.*
), inserted AS (
    INSERT INTO jobs ({_ELEMENT_COLUMNS})
    SELECT {element_id_sql("p.id", "t.i")}, p.tenant_id, p.kernel, p.device, {PARAMS},
           p.inputs, p.outputs, p.labels, p.output_tier, p.priority, p.timeout_s,
           p.max_retries, 'FAILED', NULL, f.attempt, f.device, f.worker, NULL, NULL,
           '{LOST_ERROR}', p.created_at, now(), f.created_at, f.dispatched_at, now(), false,
           p.id, t.i, NULL
    FROM failing f
    JOIN jobs p ON p.id = f.array_id
    JOIN job_arrays a ON a.job_id = f.array_id
    CROSS JOIN LATERAL ({_TODO_OF.format(c="f")}) t
    ORDER BY p.id, t.i
    ON CONFLICT DO NOTHING
    RETURNING id, tenant_id, attempts, array_id, worker, assigned_device, started_at
), usage AS (
    INSERT INTO job_attempts (job_id, attempt, tenant_id, worker, outcome, cpu_seconds,
                              gpu_seconds, wall_seconds, device, started_at, error)
    SELECT id, k, tenant_id, CASE WHEN k = attempts THEN worker END, 'LOST', 0, 0, 0,
           CASE WHEN k = attempts THEN assigned_device END,
           CASE WHEN k = attempts THEN started_at END, '{LOST_ERROR}'
    FROM inserted CROSS JOIN generate_series(1, attempts) AS k  -- every attempt, all lost
    ON CONFLICT DO NOTHING
), moved AS (
    UPDATE job_arrays a SET n_pending = a.n_pending + s.k, n_running = a.n_running - s.k
    FROM (SELECT array_id, count(*)::int AS k FROM inserted GROUP BY array_id) s
    WHERE a.job_id = s.array_id
), woke AS MATERIALIZED (
    {notify_once("expired", FINISHED)}
)
SELECT (SELECT count(*) FROM requeued)::int, (SELECT count(*) FROM failing)::int FROM woke
"""  # noqa: S608 (built from constants only)


async def requeue_expired(fetch: Fetch, *, batch: int = 100) -> tuple[int, int]:
    """The reaper's step for chunks whose worker was lost (see ``_REQUEUE``), in one
    statement; returns (chunks re-queued, chunks failed)."""
    rows = await fetch(_REQUEUE, batch)
    return int(rows[0][0]), int(rows[0][1])


# The elements without a row of the chunks that workers hold, when their array is cancelled:
# CANCELLED rows at once (the attempt that runs them is theirs, so the worker's flush of their
# outcomes charges its usage, ``_RECORD``), moved from ``n_running`` first. The workers stop
# when their next flush answers ``cancelled`` (or the ``job.cancelled`` sent to them).
# $1 the array, $2 the reason.
_CANCEL_HELD = f"""
WITH held AS (
    SELECT c.* FROM array_chunks c WHERE c.array_id = $1 AND c.worker IS NOT NULL
), todo AS (
    SELECT held.*, t.i FROM held CROSS JOIN LATERAL ({_TODO_OF.format(c="held")}) t
), moved AS (
    UPDATE job_arrays a SET n_pending = a.n_pending + s.k, n_running = a.n_running - s.k
    FROM (SELECT count(*)::int AS k FROM todo) s
    WHERE a.job_id = $1 AND s.k > 0
), inserted AS (
    INSERT INTO jobs ({_ELEMENT_COLUMNS})
    SELECT {element_id_sql("p.id", "todo.i")}, p.tenant_id, p.kernel, p.device,
           {PARAMS},
           p.inputs, p.outputs, p.labels, p.output_tier, p.priority, p.timeout_s,
           p.max_retries, 'CANCELLED', $2::text, todo.attempt, todo.device, todo.worker, NULL,
           NULL, NULL, p.created_at, now(), todo.created_at, NULL, now(), false, p.id, todo.i,
           NULL
    FROM todo JOIN jobs p ON p.id = todo.array_id JOIN job_arrays a ON a.job_id = todo.array_id
    ORDER BY todo.i
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*)::int FROM inserted
"""  # noqa: S608 (built from constants only)


async def cancel_held(fetch: Fetch, array_id: uuid.UUID, *, reason: str) -> int:
    """A cancelled array's elements in chunks that workers hold: CANCELLED at once (see
    ``_CANCEL_HELD``), with ``reason``; returns how many."""
    rows = await fetch(_CANCEL_HELD, array_id, reason)
    return int(rows[0][0])
