"""Arrays and their elements as the job routes read them (``shared.jobs.arrays`` has the
design).

A route's job id is a UUID (a job, an array, or an element's own row) or
``"{array_id}:{index}"`` (an element); anything else, an index past the array's size or
another tenant's id is the same 404. An array is shown with its ``job_arrays`` row: its
settings and its counts, one row whatever its size. An element is its row once the scheduler
has materialised it (or it was cancelled on its own); until then it is *virtual*: built from
its array's templates (``element_of``), PENDING, or CANCELLED once the array is cancelled;
an element in a chunk (``shared.jobs.chunks``) is QUEUED or RUNNING as its chunk is, until
the flush that records its end gives it its row.
Every read costs what it shows: a page of elements reads at most its own rows, never the
whole array.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.jobs.chunked import IN_CHUNK, chunk_at, chunk_state, chunks_over, in_chunks
from services.gateway.jobs.schemas import ArrayOut, JobOut
from shared.db.models import ArrayChunk, Job, JobArray
from shared.errors import Invalid, NotFound
from shared.jobs.arrays import JobRef, element_id, element_of, parse_job_ref, public_id
from shared.jobs.states import JobState

NOT_FOUND = "job not found"
# The largest index an element id can hold (its last 48 bits).
_LAST_INDEX = (1 << 48) - 1
# Why a virtual element is where it is.
WAITING_TURN = "waiting for its turn in the array"
ARRAY_CANCELLED = "the array was cancelled"


def job_ref(text: str) -> JobRef:
    """The job a route's id names; 404 for anything that is not an id."""
    ref = parse_job_ref(text)
    if ref is None:
        raise NotFound(NOT_FOUND)
    return ref


def array_part(array: JobArray) -> ArrayOut:
    return ArrayOut(
        size=array.size,
        index_param=array.index_param,
        max_concurrent=array.max_concurrent,
        counts={
            "PENDING": array.n_pending,
            "QUEUED": array.n_queued,
            "RUNNING": array.n_running,
            "SUCCEEDED": array.n_succeeded,
            "FAILED": array.n_failed,
            "CANCELLED": array.n_cancelled,
            "TIMED_OUT": array.n_timed_out,
        },
    )


def job_out(job: Job, array: JobArray | None = None) -> JobOut:
    """A job's row as the API shows it: an element under its public id, an array with its
    settings and counts (``array``: its ``job_arrays`` row)."""
    out = JobOut.model_validate(job, from_attributes=True)
    if job.array_id is not None and job.array_index is not None:
        return out.model_copy(update={"id": public_id(job.array_id, job.array_index)})
    if array is not None:
        return out.model_copy(update={"array": array_part(array)})
    return out


def virtual_element(
    parent: Job, array: JobArray, index: int, chunk: ArrayChunk | None = None
) -> JobOut:
    """Element ``index`` of ``parent`` before it has a row: what its row will hold when the
    scheduler materialises it, PENDING (CANCELLED if the array was cancelled); in
    ``chunk``, its chunk's state (QUEUED, or RUNNING on the chunk's worker)."""
    element = element_of(
        params=parent.params,
        inputs=parent.inputs,
        outputs=parent.outputs,
        index=index,
        index_param=array.index_param,
        overrides=array.overrides,
    )
    return JobOut(
        id=public_id(parent.id, index),
        kernel=parent.kernel,
        device=parent.device,
        params=element.params,
        inputs=element.inputs,
        outputs=element.outputs,
        output_tier=parent.output_tier,
        priority=parent.priority,
        timeout_s=parent.timeout_s,
        max_retries=parent.max_retries,
        labels=parent.labels,
        state=_virtual_state(array).value if chunk is None else chunk_state(chunk).value,
        state_reason=_virtual_reason(array, chunk),
        attempts=0 if chunk is None else chunk.attempt,
        created_at=parent.created_at,
        started_at=None,
        finished_at=parent.finished_at if array.cancelled else None,
        result=None,
        error=None,
        worker=None if chunk is None else chunk.worker,
        array_id=str(parent.id),
        array_index=index,
    )


async def own_job(session: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job | None:
    query = select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)
    return (await session.execute(query)).scalar_one_or_none()


async def own_array(
    session: AsyncSession, tenant_id: uuid.UUID, array_id: uuid.UUID
) -> tuple[Job, JobArray]:
    """The tenant's array ``array_id`` and its ``job_arrays`` row; 404 for anything else."""
    query = (
        select(Job, JobArray)
        .join(JobArray, JobArray.job_id == Job.id)
        .where(Job.id == array_id, Job.tenant_id == tenant_id)
    )
    found = (await session.execute(query)).one_or_none()
    if found is None:
        raise NotFound(NOT_FOUND)
    return found[0], found[1]


async def element_row(session: AsyncSession, parent: Job, index: int) -> Job | None:
    """Element ``index``'s row, if it has one."""
    query = select(Job).where(
        Job.id == element_id(parent.id, index),
        Job.array_id == parent.id,
        Job.tenant_id == parent.tenant_id,
    )
    return (await session.execute(query)).scalar_one_or_none()


async def read_job(*, session: AsyncSession, tenant_id: uuid.UUID, text: str) -> JobOut:
    """``GET /v1/jobs/{id}``: a job, an array (with its counts) or an element."""
    ref = job_ref(text)
    if ref.index is None:
        job = await own_job(session, tenant_id, ref.id)
        if job is None:
            raise NotFound(NOT_FOUND)
        array = await session.get(JobArray, job.id) if job.is_array else None
        return job_out(job, array)
    parent, array = await own_array(session, tenant_id, ref.id)
    if ref.index >= array.size:
        raise NotFound(NOT_FOUND)
    row = await element_row(session, parent, ref.index)
    if row is not None:
        return job_out(row)
    chunk = chunk_at(await chunks_over(session, parent.id, ref.index, ref.index + 1), ref.index)
    return virtual_element(parent, array, ref.index, chunk)


async def arrays_of(session: AsyncSession, jobs: list[Job]) -> dict[uuid.UUID, JobArray]:
    """The ``job_arrays`` rows of the arrays among ``jobs`` (a list's page), in one query."""
    ids = [j.id for j in jobs if j.is_array]
    if not ids:
        return {}
    rows = await session.execute(select(JobArray).where(JobArray.job_id.in_(ids)))
    return {a.job_id: a for a in rows.scalars()}


# --- GET /v1/jobs/{array_id}/elements --------------------------------------------------


@dataclass(frozen=True)
class ElementPage:
    items: list[JobOut]
    next_cursor: str | None


def element_cursor(cursor: str | None) -> int:
    """A page's first index: the ``next_cursor`` of the previous page (an index), 0 when none."""
    if not cursor:
        return 0
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 9):
        raise Invalid(
            "malformed cursor",
            errors=[{"loc": ["query", "cursor"], "msg": "an element index (a next_cursor)"}],
        )
    return int(cursor)


async def list_elements(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    text: str,
    state: JobState | None,
    limit: int,
    cursor: str | None,
) -> ElementPage:
    """The elements of the array ``text`` names from index ``cursor`` up, in index order,
    those in ``state`` only when it is given. 404 for a job that is not an array."""
    start = element_cursor(cursor)
    ref = job_ref(text)
    if ref.index is not None:
        raise NotFound("an element has no elements: name its array")
    parent, array = await own_array(session, tenant_id, ref.id)
    if state is None:
        return await _all_from(session, parent, array, start, limit)
    found = await _rows_in_state(session, parent, state, start, limit + 1)
    chunked = await in_chunks(session, parent.id, state, start, limit + 1)
    found += [(i, virtual_element(parent, array, i, c)) for i, c in chunked]
    found.sort(key=lambda item: item[0])
    if state is _virtual_state(array):
        virtual = await _virtual_from(session, parent, array, start, limit + 1)
        found += [(i, virtual_element(parent, array, i)) for i in virtual]
        found.sort(key=lambda item: item[0])
    page = [out for _, out in found[:limit]]
    return ElementPage(page, str(found[limit][0]) if len(found) > limit else None)


def _virtual_state(array: JobArray) -> JobState:
    return JobState.CANCELLED if array.cancelled else JobState.PENDING


def _virtual_reason(array: JobArray, chunk: ArrayChunk | None) -> str | None:
    if chunk is not None:
        return IN_CHUNK if chunk.worker is None else None
    return ARRAY_CANCELLED if array.cancelled else WAITING_TURN


async def _all_from(
    session: AsyncSession, parent: Job, array: JobArray, start: int, limit: int
) -> ElementPage:
    """Indices ``start`` to ``start + limit``: the rows among them, the rest virtual."""
    end = min(array.size, start + limit)
    query = select(Job).where(
        Job.array_id == parent.id, Job.array_index >= start, Job.array_index < end
    )
    rows = {j.array_index: j for j in (await session.execute(query)).scalars()}
    chunks = await chunks_over(session, parent.id, start, end)
    items = [
        job_out(rows[i]) if i in rows else virtual_element(parent, array, i, chunk_at(chunks, i))
        for i in range(start, end)
    ]
    return ElementPage(items, str(end) if end < array.size else None)


def element_rows(parent: Job, start: int = 0) -> list[ColumnElement[bool]]:
    """Conditions that hold for the rows of ``parent``'s elements from index ``start`` up.
    An element's row has its array's tenant and ``created_at`` and an id that orders as its
    index, so with a condition on the state they are one range of
    ``ix_jobs_tenant_state_created`` (ordered by ``Job.id``, index order): a read costs the
    rows in that state, however many the array has in others."""
    return [
        Job.tenant_id == parent.tenant_id,
        Job.created_at == parent.created_at,
        Job.id >= element_id(parent.id, start),
        Job.id <= element_id(parent.id, _LAST_INDEX),
        Job.array_id == parent.id,
    ]


async def _rows_in_state(
    session: AsyncSession, parent: Job, state: JobState, start: int, count: int
) -> list[tuple[int, JobOut]]:
    """The first ``count`` element rows in ``state`` from index ``start`` up."""
    query = (
        select(Job)
        .where(Job.state == state.value, *element_rows(parent, start))
        .order_by(Job.id)
        .limit(count)
    )
    rows = (await session.execute(query)).scalars()
    return [(j.array_index or 0, job_out(j)) for j in rows]


async def _virtual_from(
    session: AsyncSession, parent: Job, array: JobArray, start: int, count: int
) -> list[int]:
    """The first ``count`` indices from ``start`` up that have no row (nor chunk). Every
    index below ``next_index`` has one, but in an array run in chunks (whose elements have
    no row until they end, and none when their chunk was dropped by a cancel); above it,
    only those cancelled on their own, which each window skips."""
    found: list[int] = []
    chunked = parent.inputs == {} and parent.outputs == {}
    low = start if chunked and array.cancelled else max(start, array.next_index)
    while len(found) < count and low < array.size:
        high = min(array.size, low + count - len(found))
        query = select(Job.array_index).where(
            Job.array_id == parent.id, Job.array_index >= low, Job.array_index < high
        )
        taken = set((await session.execute(query)).scalars())
        chunks = await chunks_over(session, parent.id, low, high) if chunked else []
        found += [i for i in range(low, high) if i not in taken and chunk_at(chunks, i) is None]
        low = high
    return found
