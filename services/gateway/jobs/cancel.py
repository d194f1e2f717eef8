"""``POST /v1/jobs/{id}/cancel`` for a job, an array or an element.

A job, and an element with a row, is cancelled through ``set_job_state`` (its row locked, its
``job_events`` row) with a ``job.cancelled`` event that stops it on its worker. An element
without a row gets one, CANCELLED, as the scheduler would have materialised it. An array has
all of it cancelled in one transaction: its materialised elements that are not final, then
its virtual ones at once (``n_pending`` moved to ``n_cancelled``, ``cancelled`` set, which
also stops the scheduler materialising more).

Lock order. Every statement that changes an element's state locks the element's row, then
(the counts' trigger) its array's ``job_arrays`` row. So an array's cancel locks the elements
it cancels first, then the array; the elements the scheduler materialised in between are
locked after the array without waiting (``NOWAIT``): one of them held by a statement that
waits for the array would otherwise be a deadlock; that rare collision is a 409 to retry.
The scheduler materialises under the array's lock (``SKIP LOCKED``): once the cancel holds
it, no element appears; after it commits, none is materialised again. An element cancelled
before it has a row is inserted under the array's lock, for the same reason.

Chunks (``shared.jobs.chunks``). Their statements lock the chunk, then the array; so does a
cancel: the array's chunks first. A chunk no worker holds goes at once, its elements
CANCELLED in the counts (``cancel_chunks``); a held one's elements without a row get
CANCELLED rows at once (``cancel_held``: the array is CANCELLED when the answer comes, as
with rows), and its worker stops, told by its next flush or at once by the ``job.cancelled``
event addressed to it with the array's id; its flush of what ran charges those attempts.
An element cancelled on its own in a chunk gets its CANCELLED row, and leaves its chunk's
count (QUEUED or RUNNING) for ``n_cancelled``; the worker's record of it then changes
nothing.
"""

from __future__ import annotations

import uuid

import asyncpg
from sqlalchemy import Select, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.jobs.elements import (
    NOT_FOUND,
    element_row,
    element_rows,
    job_out,
    job_ref,
    own_array,
    own_job,
)
from services.gateway.jobs.schemas import JobOut
from shared.db.models import ArrayChunk, Job, JobArray, JobEvent
from shared.db.outbox import add_event
from shared.errors import Conflict, NotFound
from shared.events import JobCancelled, utcnow
from shared.jobs.arrays import element_id, element_of
from shared.jobs.chunks import cancel_chunks, cancel_held
from shared.jobs.proposals import Cancelled, reason_and_error
from shared.jobs.states import FINAL, JobState
from shared.jobs.store import session_fetch, set_job_state

LIVE = tuple(s.value for s in JobState if s not in FINAL)
# The virtual elements of a cancelled array become CANCELLED at once; then the array's state.
_CANCEL_VIRTUAL = text(
    "UPDATE job_arrays SET cancelled = true, n_cancelled = n_cancelled + n_pending,"
    " n_pending = 0 WHERE job_id = :id"
)
_REFRESH = text("SELECT stratus_array_refresh(ARRAY[CAST(:id AS uuid)])")
BUSY = "the array is changing (an element is being taken by a worker); retry"


async def cancel(*, session: AsyncSession, tenant_id: uuid.UUID, text_id: str) -> JobOut:
    """Cancel the job, array or element ``text_id`` names; 404 for another tenant's, 409 for
    one already final."""
    ref = job_ref(text_id)
    if ref.index is not None:
        return await cancel_element(session, tenant_id, ref.id, ref.index)
    job = await own_job(session, tenant_id, ref.id)
    if job is None:
        raise NotFound(NOT_FOUND)
    if job.is_array:
        return await cancel_array(session, tenant_id, job)
    return job_out(await cancel_row(session, tenant_id, job.id))


async def cancel_row(session: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    """A job's (or an element's) row to CANCELLED, and the ``job.cancelled`` event that
    stops it where it runs; 409 when it is final."""
    transition = await set_job_state(session, job_id, Cancelled(), tenant_id=tenant_id)
    if not transition.accepted:
        raise Conflict(f"job is already {transition.previous}")
    await add_event(
        session,
        JobCancelled(tenant_id=tenant_id, job_id=job_id, worker=transition.job.worker),
    )
    return transition.job


async def cancel_array(session: AsyncSession, tenant_id: uuid.UUID, parent: Job) -> JobOut:
    """Every element of ``parent`` that is not final to CANCELLED (see the module's doc)."""
    chunks = await _lock_chunks(session, parent.id)
    first = await _lock_live(session, parent, wait=True)
    array = await _lock_array(session, parent.id)
    if array.n_pending + array.n_queued + array.n_running == 0:
        await session.refresh(parent)  # its state as the last element left it
        raise Conflict(f"array is already {parent.state}")
    late = await _lock_live(session, parent, wait=False)  # materialised meanwhile
    for job_id in sorted(set(first) | set(late)):
        await cancel_row(session, tenant_id, job_id)
    await session.execute(_CANCEL_VIRTUAL, {"id": parent.id})
    await cancel_chunks(session_fetch(session), parent.id)
    reason, _ = reason_and_error(Cancelled())
    await cancel_held(session_fetch(session), parent.id, reason=reason or "cancelled")
    for worker in sorted({c.worker for c in chunks if c.worker is not None}):
        await add_event(session, JobCancelled(tenant_id=tenant_id, job_id=parent.id, worker=worker))
    await session.execute(_REFRESH, {"id": parent.id})
    await session.refresh(parent)
    await session.refresh(array)
    return job_out(parent, array)


async def cancel_element(
    session: AsyncSession, tenant_id: uuid.UUID, array_id: uuid.UUID, index: int
) -> JobOut:
    """Element ``index`` of the array ``array_id``: its row cancelled, or, without one, a
    CANCELLED row inserted; 409 when it is final (every virtual element of a cancelled array
    is)."""
    parent, array = await own_array(session, tenant_id, array_id)
    if index >= array.size:
        raise NotFound(NOT_FOUND)
    job_id = element_id(parent.id, index)
    if await element_row(session, parent, index) is None:
        chunk = await _lock_chunk_of(session, parent.id, index)
        array = await _lock_array(session, parent.id)
        if array.cancelled:
            raise Conflict("job is already CANCELLED")
        if await element_row(session, parent, index) is None:
            if chunk is not None:
                await _leave_chunk(session, chunk)
            # an element of a held chunk may be running: its attempt, so that the worker's
            # flush of it charges the run
            held = chunk.attempt if chunk is not None and chunk.worker is not None else 0
            return job_out(await _insert_cancelled(session, parent, array, index, held))
        await _lock_nowait(session, select(Job.id).where(Job.id == job_id))
    return job_out(await cancel_row(session, tenant_id, job_id))


async def _insert_cancelled(
    session: AsyncSession, parent: Job, array: JobArray, index: int, attempts: int = 0
) -> Job:
    """Element ``index``'s row as the scheduler materialises it, but CANCELLED, with its
    history row and ``job.cancelled`` event. The counts' trigger moves it from
    ``n_pending`` to ``n_cancelled``; the scheduler's insert of that index does nothing."""
    element = element_of(
        params=parent.params,
        inputs=parent.inputs,
        outputs=parent.outputs,
        index=index,
        index_param=array.index_param,
        overrides=array.overrides,
    )
    now = utcnow()
    reason, _ = reason_and_error(Cancelled())
    job = Job(
        id=element_id(parent.id, index),
        tenant_id=parent.tenant_id,
        kernel=parent.kernel,
        device=parent.device,
        params=element.params,
        inputs=element.inputs,
        outputs=element.outputs,
        labels=parent.labels,
        output_tier=parent.output_tier,
        priority=parent.priority,
        timeout_s=parent.timeout_s,
        max_retries=parent.max_retries,
        state=JobState.CANCELLED.value,
        state_reason=reason,
        attempts=attempts,
        created_at=parent.created_at,
        updated_at=now,
        finished_at=now,
        is_array=False,
        array_id=parent.id,
        array_index=index,
    )
    session.add(job)
    await session.flush()
    session.add(
        JobEvent(
            job_id=job.id,
            tenant_id=parent.tenant_id,
            attempt=0,
            from_state=JobState.PENDING.value,
            to_state=JobState.CANCELLED.value,
            reason=reason,
            at=now,
        )
    )
    await add_event(session, JobCancelled(tenant_id=parent.tenant_id, job_id=job.id))
    return job


async def _lock_live(session: AsyncSession, parent: Job, *, wait: bool) -> list[uuid.UUID]:
    """The ids of ``parent``'s elements that have a row and are not final, locked in id
    order (as every batch of jobs locks its rows); only those rows are read, however many
    of the array's elements are final (``element_rows``)."""
    query = select(Job.id).where(Job.state.in_(LIVE), *element_rows(parent)).order_by(Job.id)
    if wait:
        return list((await session.execute(query.with_for_update())).scalars())
    return await _lock_nowait(session, query)


async def _lock_nowait(session: AsyncSession, query: Select[uuid.UUID]) -> list[uuid.UUID]:
    """``query``'s rows locked if none is held by another transaction; 409 (retry) if one is."""
    try:
        result = await session.execute(query.with_for_update(nowait=True))
    except DBAPIError as exc:
        if _lock_unavailable(exc):
            raise Conflict(BUSY, retry_after=1.0) from exc
        raise
    return list(result.scalars())


def _lock_unavailable(exc: DBAPIError) -> bool:
    cause: BaseException | None = exc.orig
    while cause is not None:
        if isinstance(cause, asyncpg.LockNotAvailableError):
            return True
        cause = cause.__cause__
    return False


async def _lock_chunks(session: AsyncSession, array_id: uuid.UUID) -> list[ArrayChunk]:
    """The array's chunks, locked in id order (before the array: see the module's doc)."""
    query = (
        select(ArrayChunk)
        .where(ArrayChunk.array_id == array_id)
        .order_by(ArrayChunk.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list((await session.execute(query)).scalars())


async def _lock_chunk_of(
    session: AsyncSession, array_id: uuid.UUID, index: int
) -> ArrayChunk | None:
    """The chunk that holds element ``index``, locked, if there is one."""
    query = (
        select(ArrayChunk)
        .where(
            ArrayChunk.array_id == array_id,
            ArrayChunk.first_index <= index,
            ArrayChunk.first_index + ArrayChunk.n > index,
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def _leave_chunk(session: AsyncSession, chunk: ArrayChunk) -> None:
    """An element of ``chunk`` about to get its row: the counts' trigger takes it from
    ``n_pending``, but it is counted in its chunk's QUEUED or RUNNING: moved there first."""
    count = JobArray.n_running if chunk.worker is not None else JobArray.n_queued
    await session.execute(
        update(JobArray)
        .where(JobArray.job_id == chunk.array_id)
        .values({JobArray.n_pending: JobArray.n_pending + 1, count: count - 1})
    )


async def _lock_array(session: AsyncSession, array_id: uuid.UUID) -> JobArray:
    query = (
        select(JobArray)
        .where(JobArray.job_id == array_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(query)).scalar_one()
