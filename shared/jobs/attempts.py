"""Where each attempt that ended is recorded: a ``job_attempts`` row, or, for the elements a
chunk's flush recorded (``shared.jobs.chunks``), an entry in that flush's ``chunk_attempts``
row (migration 0028): one row per flush instead of one per element, the arrays holding each
element's outcome, CPU and wall seconds, start and error, index by index. Each (job, attempt)
is in exactly one of the two. ``attempt_records`` is the view of both, one row per attempt
(``AttemptRecord``), for the readers that sum or list attempts by tenant and time (usage);
``ended_attempts`` reads one job's, the way ``GET /v1/jobs/{id}/attempts`` and its log do.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import (
    DateTime,
    Float,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.models import Base, JobAttempt


class AttemptRecord(Base):
    """One attempt that ended, wherever it is recorded: the view ``attempt_records``
    (``job_attempts`` and the entries of ``chunk_attempts``). Read only."""

    __tablename__ = "attempt_records"
    __table_args__ = {"info": {"is_view": True}}

    job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    worker: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16))
    cpu_seconds: Mapped[float] = mapped_column(Float)
    gpu_seconds: Mapped[float] = mapped_column(Float)
    wall_seconds: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    device: Mapped[str | None] = mapped_column(String(8))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)


# One job's ended attempts: its job_attempts rows, and, for an element, its entries in the
# chunk_attempts rows of its array whose index range holds it (the index keeps the read to
# the array's flushes around it). :job the job's id.
_ENDED = text(
    """
    SELECT attempt, worker, outcome, cpu_seconds, gpu_seconds, wall_seconds, finished_at,
           device, started_at, error
    FROM job_attempts WHERE job_id = :job
    UNION ALL
    SELECT c.attempt, c.worker, u.outcome, u.cpu, 0::float8, u.wall, c.finished_at, c.device,
           u.started, u.error
    FROM jobs j
    JOIN chunk_attempts c ON c.array_id = j.array_id AND c.first_index <= j.array_index
                         AND c.last_index >= j.array_index
    CROSS JOIN LATERAL unnest(c.indices, c.outcomes, c.cpu_seconds, c.wall_seconds,
                              c.started_at, c.errors) AS u(i, outcome, cpu, wall, started, error)
    WHERE j.id = :job AND j.array_id IS NOT NULL AND u.i = j.array_index
    ORDER BY attempt
    """
)


async def ended_attempts(
    session: AsyncSession, job_id: uuid.UUID, *, skip: Collection[int] = ()
) -> list[JobAttempt]:
    """The attempts of job ``job_id`` that ended (less those numbered in ``skip``), oldest
    first, as ``JobAttempt`` objects (not added to the session), wherever each is recorded."""
    rows = await session.execute(_ENDED, {"job": job_id})
    return [
        JobAttempt(
            job_id=job_id,
            attempt=r.attempt,
            worker=r.worker,
            outcome=r.outcome,
            cpu_seconds=r.cpu_seconds,
            gpu_seconds=r.gpu_seconds,
            wall_seconds=r.wall_seconds,
            finished_at=r.finished_at,
            device=r.device,
            started_at=r.started_at,
            error=r.error,
        )
        for r in rows
        if r.attempt not in skip
    ]
