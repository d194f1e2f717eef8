"""Reads of array elements that wait or run in a chunk (``shared.jobs.chunks``): such an
element has no row until it ends, so its state is its chunk's: QUEUED while the chunk waits
for a worker, RUNNING (with the worker) once one holds it."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import ArrayChunk, Job
from shared.jobs.states import JobState

IN_CHUNK = "waiting in a chunk of the array for a worker"


def chunk_state(chunk: ArrayChunk) -> JobState:
    return JobState.RUNNING if chunk.worker is not None else JobState.QUEUED


async def chunks_over(
    session: AsyncSession, array_id: uuid.UUID, start: int, end: int
) -> list[ArrayChunk]:
    """The chunks of ``array_id`` that hold an index in ``[start, end)``, in index order."""
    query = (
        select(ArrayChunk)
        .where(
            ArrayChunk.array_id == array_id,
            ArrayChunk.first_index < end,
            ArrayChunk.first_index + ArrayChunk.n > start,
        )
        .order_by(ArrayChunk.first_index)
    )
    return list((await session.execute(query)).scalars())


def chunk_at(chunks: list[ArrayChunk], index: int) -> ArrayChunk | None:
    """The chunk among ``chunks`` that holds ``index``."""
    for chunk in chunks:
        if chunk.first_index <= index < chunk.first_index + chunk.n:
            return chunk
    return None


async def in_chunks(
    session: AsyncSession, array_id: uuid.UUID, state: JobState, start: int, count: int
) -> list[tuple[int, ArrayChunk]]:
    """The first ``count`` indices from ``start`` up of elements in ``state`` (QUEUED or
    RUNNING) in a chunk and without a row, each with its chunk. Reads chunk by chunk: a
    chunk's rows at most."""
    if state not in (JobState.QUEUED, JobState.RUNNING):
        return []
    held = ArrayChunk.worker.is_not(None)
    query = (
        select(ArrayChunk)
        .where(
            ArrayChunk.array_id == array_id,
            ArrayChunk.first_index + ArrayChunk.n > start,
            held if state is JobState.RUNNING else ~held,
        )
        .order_by(ArrayChunk.first_index)
    )
    found: list[tuple[int, ArrayChunk]] = []
    for chunk in (await session.execute(query)).scalars():
        low, high = max(start, chunk.first_index), chunk.first_index + chunk.n
        rows = select(Job.array_index).where(
            Job.array_id == array_id, Job.array_index >= low, Job.array_index < high
        )
        taken = set((await session.execute(rows)).scalars())
        found += [(i, chunk) for i in range(low, high) if i not in taken]
        if len(found) >= count:
            break
    return found[:count]
