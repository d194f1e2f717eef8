"""A running job's progress and log lines, from the kernel to the job's row.

In the pool process (``child``): a kernel that iterates runs its compiled loop in blocks and
says how far it is between them (``blocks``, ``report``). Without a sink (a benchmark, a
test, an array chunk's batch) ``blocks`` is one block of everything: the kernel runs as it
always did. With one (``frames``: the pool process on a single job) a block lasts about
``BLOCK_S``, which the block sizes adapt to as they go; a report becomes a
``{"type": "progress", "value"}`` frame at most once every ``FRAME_GAP_S``.

In the worker (``Tracker``): the runner hands each frame to ``on_progress``; the tracker
keeps the latest value per running attempt and the log lines (stage-out) it was given, and
``flush`` writes them every ``FLUSH_S`` in ONE statement: ``jobs.progress``, a ``job_events``
row of kind ``progress`` per job (the events feed's ``job.progress``), a ``job_log`` line
per changed value, and the other lines. A job is written once it has run for ``FLUSH_S``:
a job that ends sooner writes nothing here (its transitions and its ``job_attempts`` row
already say what happened), so the many short jobs cost nothing more.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

# How long a kernel's block runs between reports, about (seconds).
BLOCK_S = 0.25
# A block grows at most this many times from one to the next (the first ones are short).
GROWTH = 8
# The least time between two progress frames of a job.
FRAME_GAP_S = 1.0
# How often the worker writes its running jobs' progress and lines.
FLUSH_S = 2.0

Sink = Callable[[float], None]

_sink: Sink | None = None


def report(fraction: float) -> None:
    """The running kernel is ``fraction`` (0.0-1.0) of the way; nothing without a sink."""
    if _sink is not None:
        _sink(min(max(float(fraction), 0.0), 1.0))


def reporting() -> bool:
    return _sink is not None


@contextlib.contextmanager
def sink(fn: Sink | None) -> Iterator[None]:
    """Reports go to ``fn`` inside the block."""
    global _sink
    previous, _sink = _sink, fn
    try:
        yield
    finally:
        _sink = previous


def blocks(total: int, *, first: int = 1, block_s: float = BLOCK_S) -> Iterator[int]:
    """Sizes of consecutive blocks of ``total`` units of work (steps, streams) that add up
    to ``total``; the caller runs each block when it gets it. After each block, ``report``
    says how far the whole is. Without a sink: one block of ``total``, no report."""
    if _sink is None or total <= 0:
        if total > 0:
            yield total
        return
    done, size = 0, max(1, first)
    while done < total:
        n = min(size, total - done)
        t0 = time.perf_counter()
        yield n
        elapsed = time.perf_counter() - t0
        done += n
        report(done / total)
        # the size that takes about ``block_s`` at the rate just seen, growing gradually
        rate = n / elapsed if elapsed > 0 else float("inf")
        size = max(1, min(int(rate * block_s), n * GROWTH))


def frames(out: BinaryIO, write: Callable[[BinaryIO, dict[str, Any]], None]) -> Sink:
    """A sink that writes a progress frame to ``out`` at most every ``FRAME_GAP_S``."""
    last = [time.monotonic()]  # the first frame a gap after the job began

    def send(value: float) -> None:
        now = time.monotonic()
        if now - last[0] >= FRAME_GAP_S:
            last[0] = now
            write(out, {"type": "progress", "value": value})

    return send


# --- the worker's side -----------------------------------------------------------------


@dataclass
class _Running:
    tenant_id: uuid.UUID
    attempt: int
    started: float
    value: float | None = None
    written: float | None = None  # the value last flushed
    flushed: bool = False  # had a flush: its lines outlive its end
    lines: list[tuple[datetime, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Batch:
    """What one flush writes."""

    job_ids: list[uuid.UUID]
    tenants: list[uuid.UUID]
    attempts: list[int]
    values: list[float]
    line_jobs: list[uuid.UUID]
    line_tenants: list[uuid.UUID]
    line_attempts: list[int]
    line_at: list[datetime]
    lines: list[str]

    def __bool__(self) -> bool:
        return bool(self.job_ids or self.lines)


def percent(value: float) -> str:
    return f"progress {value * 100:.0f}%"


class Tracker:
    """The running attempts' latest progress and their lines, until the next flush."""

    def __init__(self, *, min_age_s: float = FLUSH_S) -> None:
        self.min_age_s = min_age_s  # a job is written once it has run this long
        self._running: dict[uuid.UUID, _Running] = {}
        self._ended: list[tuple[uuid.UUID, _Running]] = []  # lines left of ended attempts

    def start(self, job_id: uuid.UUID, tenant_id: uuid.UUID, attempt: int) -> None:
        self._running[job_id] = _Running(tenant_id, attempt, time.monotonic())

    def progress(self, job_id: uuid.UUID, value: float) -> None:
        run = self._running.get(job_id)
        if run is not None:
            run.value = min(max(value, 0.0), 1.0)

    def line(self, job_id: uuid.UUID, text: str) -> None:
        run = self._running.get(job_id)
        if run is not None:
            run.lines.append((datetime.now(UTC), text))

    def end(self, job_id: uuid.UUID) -> None:
        """The attempt ended: its progress is no longer written; its lines are, at the next
        flush, if it ran through one (a job of under ``FLUSH_S`` writes none)."""
        run = self._running.pop(job_id, None)
        if run is not None and run.lines and run.flushed:
            self._ended.append((job_id, run))

    def take(self) -> Batch:
        """What the next flush writes; the tracker forgets it (a failed flush loses one
        round of progress, which the next one replaces)."""
        b = Batch([], [], [], [], [], [], [], [], [])
        now, clock = datetime.now(UTC), time.monotonic()
        # a younger job waits for a later flush: one that ends before that writes nothing
        old = {j: r for j, r in self._running.items() if clock - r.started >= self.min_age_s}
        for job_id, run in old.items():
            run.flushed = True
            if run.value is not None and run.value != run.written:
                b.job_ids.append(job_id)
                b.tenants.append(run.tenant_id)
                b.attempts.append(run.attempt)
                b.values.append(run.value)
                run.lines.append((now, percent(run.value)))
                run.written = run.value
        for job_id, run in [*self._ended, *old.items()]:
            for at, text in run.lines:
                b.line_jobs.append(job_id)
                b.line_tenants.append(run.tenant_id)
                b.line_attempts.append(run.attempt)
                b.line_at.append(at)
                b.lines.append(text)
            run.lines = []
        self._ended = []
        return b

    def __len__(self) -> int:
        return len(self._running)


# jobs.progress of the jobs still RUNNING the attempt, a job_events row of kind 'progress'
# each (the events feed's job.progress), and the log lines: one statement, one commit.
# $1 job ids, $2 attempts, $3 values, $4 the worker, $5-$9 the lines (job, tenant, attempt,
# at, text).
FLUSH = """
    WITH report AS (
        SELECT * FROM unnest($1::uuid[], $2::int[], $3::float8[]) AS r(id, attempt, value)
    ), job AS (
        UPDATE jobs SET progress = report.value
        FROM report
        -- by id alone (shared.jobs.store, BY_ID_ONLY)
        WHERE jobs.id = report.id AND jobs.state || '' = 'RUNNING'
          AND jobs.attempts = report.attempt
        RETURNING jobs.id, jobs.tenant_id, jobs.attempts, report.value
    ), history AS (
        INSERT INTO job_events (job_id, tenant_id, attempt, from_state, to_state, kind,
                                progress, worker, at)
        SELECT id, tenant_id, attempts, 'RUNNING', 'RUNNING', 'progress', value, $4, now()
        FROM job
    ), lines AS (
        INSERT INTO job_log (job_id, tenant_id, attempt, at, line)
        SELECT * FROM unnest($5::uuid[], $6::uuid[], $7::int[], $8::timestamptz[], $9::text[])
    )
    SELECT count(*) FROM job
"""


async def write(fetch: Callable[..., Any], batch: Batch, *, worker: str) -> None:
    """``batch`` in one statement (``fetch``: a plain asyncpg connection's)."""
    await fetch(
        FLUSH,
        batch.job_ids,
        batch.attempts,
        batch.values,
        worker,
        batch.line_jobs,
        batch.line_tenants,
        batch.line_attempts,
        batch.line_at,
        batch.lines,
    )


# A checkpoint of the running attempt, saved or resumed from, as its frame arrives (a killed
# attempt's saves are counted all the same): the job's ``checkpoints`` (+1 for a save) and
# ``resumed_from`` (a resume), and a ``job_events`` row of kind ``checkpoint`` (the events
# feed's job.checkpoint: ``reason`` says which, ``step``, ``checkpoints`` the count after it).
# Only while the attempt is the job's and RUNNING. $1 job, $2 attempt, $3 'saved' or
# 'resumed', $4 the step, $5 the worker.
# A resume also names who saved the file ($6 attempt, $7 worker, $8 epoch seconds; NULL when
# the file does not say): if no save at that step was recorded (a kill between the file's
# rename and its record, or a record given up after twice the lease), that save is recorded
# first, as its own attempt's, at its own time. A step identifies a save: each one comes
# after a block, past the step its attempt resumed from.
CHECKPOINT = """
    WITH lost AS (
        SELECT $6::int AS attempt, $7::text AS worker,
               coalesce(to_timestamp($8::float8), now()) AS at
        WHERE $3::text = 'resumed' AND $6::int < $2 AND NOT EXISTS (
            SELECT 1 FROM job_events
            WHERE job_id = $1 AND kind = 'checkpoint' AND reason = 'saved'
              AND step = $4::bigint
        )
    ), job AS (
        UPDATE jobs
        SET checkpoints = checkpoints + (CASE WHEN $3::text = 'saved' THEN 1 ELSE 0 END)
                + (SELECT count(*) FROM lost)::int,
            resumed_from = CASE WHEN $3::text = 'resumed' THEN $4::bigint ELSE resumed_from END
        WHERE id = $1 AND attempts = $2 AND state || '' = 'RUNNING'  -- by id alone (BY_ID_ONLY)
        RETURNING id, tenant_id, attempts, checkpoints
    )
    INSERT INTO job_events (job_id, tenant_id, attempt, from_state, to_state, kind, reason,
                            worker, step, checkpoints, at)
    SELECT id, tenant_id, lost.attempt, 'RUNNING', 'RUNNING', 'checkpoint', 'saved',
           lost.worker, $4::bigint, checkpoints, lost.at
    FROM job, lost
    UNION ALL
    SELECT id, tenant_id, attempts, 'RUNNING', 'RUNNING', 'checkpoint', $3::text, $5, $4::bigint,
           checkpoints, now()
    FROM job
"""
CHECKPOINT_EVENTS = frozenset({"saved", "resumed"})


@dataclass(frozen=True)
class SavedBy:
    """Who saved the checkpoint file an attempt resumed from, as the file's header says."""

    attempt: int
    worker: str | None = None
    at: float | None = None  # epoch seconds

    @classmethod
    def of(cls, header: object, *, before: int) -> SavedBy | None:
        """From a resume frame's ``saved_by`` (a mapping, or None from an older file); None
        unless it names an attempt before ``before``, the resuming one."""
        if not isinstance(header, dict):
            return None
        attempt, worker, at = header.get("attempt"), header.get("worker"), header.get("at")
        if not isinstance(attempt, int) or isinstance(attempt, bool) or not 0 < attempt < before:
            return None
        return cls(
            attempt,
            worker if isinstance(worker, str) else None,
            float(at) if isinstance(at, int | float) and not isinstance(at, bool) else None,
        )


async def write_checkpoint(
    execute: Callable[..., Any],
    job_id: uuid.UUID,
    attempt: int,
    *,
    event: str,
    step: int,
    worker: str,
    saved_by: SavedBy | None = None,
) -> None:
    """A checkpoint ``event`` (``saved``, ``resumed``) of ``attempt`` at ``step``, in one
    statement (``execute``: a plain asyncpg connection's); a resume from a file ``saved_by``
    an earlier attempt records that save too if nothing did."""
    by = saved_by if event == "resumed" else None
    await execute(
        CHECKPOINT,
        job_id,
        attempt,
        event,
        int(step),
        worker,
        None if by is None else by.attempt,
        None if by is None else by.worker,
        None if by is None else by.at,
    )
