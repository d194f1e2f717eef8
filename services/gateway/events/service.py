"""Events use cases: a tenant's stream (catch-up from the tables, then the hub's live feed)
and a job's history. Functions that read take ``session`` as a keyword and never commit."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.events.feed import KEEP_ALIVE, Row, frame, read_tenant
from services.gateway.events.hub import EventHub, Live
from services.gateway.events.schemas import HistoryItem
from services.gateway.jobs.elements import NOT_FOUND, element_row, job_ref, own_array, own_job
from shared.db.models import Job, JobEvent, Workflow
from shared.errors import Invalid, NotFound
from shared.jobs.arrays import element_id
from shared.jobs.states import JobState

MAX_ID = (1 << 63) - 1


def position(text: str | None, *, loc: list[str]) -> int | None:
    """A ``Last-Event-ID`` or ``after``: an event id (a whole number), or None if not given."""
    if text is None:
        return None
    value = text.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 19 or int(value) > MAX_ID:
        raise Invalid(
            f"{loc[-1]} is not an event id",
            errors=[{"loc": loc, "msg": "expected an event id (a whole number, 0 or more)"}],
        )
    return int(value)


async def stream_target(
    *, session: AsyncSession, tenant_id: uuid.UUID, text: str | None
) -> uuid.UUID | None:
    """The row id that ``?job=`` narrows a stream to: a job's or an array's (with its
    elements), an element's, or a workflow's; 404 for anything that is not one of the
    tenant's."""
    if text is None:
        return None
    ref = job_ref(text)
    if ref.index is None:
        if await own_job(session, tenant_id, ref.id) is None and not await _own_workflow(
            session, tenant_id, ref.id
        ):
            raise NotFound(NOT_FOUND)
        return ref.id
    _parent, array = await own_array(session, tenant_id, ref.id)
    if ref.index >= array.size:
        raise NotFound(NOT_FOUND)
    return element_id(ref.id, ref.index)


async def _own_workflow(
    session: AsyncSession, tenant_id: uuid.UUID, workflow_id: uuid.UUID
) -> bool:
    found = await session.scalar(
        select(Workflow.id).where(Workflow.id == workflow_id, Workflow.tenant_id == tenant_id)
    )
    return found is not None


Db = Callable[[], AbstractAsyncContextManager[Any]]


async def _always() -> bool:
    return True


@dataclass(frozen=True)
class Stream:
    """What one subscriber reads: ``tenant_id``'s events after ``after`` (None: from now),
    only ``job``'s when given. ``allowed`` is asked again every ``keep_alive_s``: the
    stream ends once its key is revoked or its tenant suspended."""

    tenant_id: uuid.UUID
    after: int | None
    job: uuid.UUID | None
    keep_alive_s: float
    batch: int = 500
    allowed: Callable[[], Awaitable[bool]] = _always


async def events(stream: Stream, *, hub: EventHub, db: Db) -> AsyncIterator[bytes]:
    """The stream's frames, oldest first, with a keep-alive comment whenever ``keep_alive_s``
    passes without one; until the client closes it or its key stops being allowed."""
    checked = time.monotonic()
    async with aclosing(_frames(stream, hub=hub, db=db)) as frames:
        async for chunk in frames:
            yield chunk
            if time.monotonic() - checked >= stream.keep_alive_s:
                if not await stream.allowed():
                    return
                checked = time.monotonic()


async def _frames(stream: Stream, *, hub: EventHub, db: Db) -> AsyncGenerator[bytes]:
    yield KEEP_ALIVE  # the headers and a first line at once
    pos = stream.after if stream.after is not None else await hub.ready()
    while True:
        async for chunk in _catch_up(stream, pos, hub=hub, db=db):
            if isinstance(chunk, int):
                pos = chunk
            else:
                yield chunk
        live = hub.attach(stream.tenant_id, pos)
        if live is None:  # the hub moved on meanwhile (or is handing out): read again
            await asyncio.sleep(hub.settle_s)
            continue
        try:
            async for chunk in _live(stream, live, pos):
                if isinstance(chunk, int):
                    pos = chunk
                else:
                    yield chunk
        finally:
            hub.detach(live)


async def _catch_up(
    stream: Stream, pos: int, *, hub: EventHub, db: Db
) -> AsyncIterator[bytes | int]:
    """From the tables: the rows after ``pos`` up to the hub's horizon (as it moves on), then
    the position reached."""
    await hub.ready()
    while pos < hub.horizon:
        upto = hub.horizon
        async with db() as conn:
            rows = await read_tenant(
                conn,
                tenant_id=stream.tenant_id,
                after=pos,
                upto=upto,
                limit=stream.batch,
                job=stream.job,
            )
        for row in rows:
            yield frame(row)
        pos = rows[-1].id if len(rows) == stream.batch else upto
        yield pos


async def _live(stream: Stream, live: Live, pos: int) -> AsyncIterator[bytes | int]:
    """The hub's batches after ``pos``, until it drops the subscriber (too far behind):
    then the position reached, for a catch-up from the tables."""
    while True:
        if live.dropped and live.batches.empty():
            return
        try:
            batch = await asyncio.wait_for(live.batches.get(), stream.keep_alive_s)
        except TimeoutError:
            yield KEEP_ALIVE
            continue
        live.backlog -= len(batch.rows)
        if stream.job is None and batch.rows[0].id > pos:
            yield batch.joined
        else:
            pairs = zip(batch.rows, batch.frames, strict=True)
            out = b"".join(f for r, f in pairs if r.id > pos and r.concerns(stream.job))
            if out:
                yield out
        pos = max(pos, batch.upto)
        yield pos


# --- A job's history ------------------------------------------------------------------


async def history(*, session: AsyncSession, tenant_id: uuid.UUID, text: str) -> list[HistoryItem]:
    """``GET /v1/jobs/{id}/events``: a job's, an array's or an element's transitions, oldest
    first. A job stored QUEUED at submission starts with that QUEUED (from its row); an
    element run in a chunk has no ``job_events`` rows, so its row's times are its history."""
    ref = job_ref(text)
    if ref.index is None:
        job = await own_job(session, tenant_id, ref.id)
        if job is None:
            raise NotFound(NOT_FOUND)
    else:
        parent, array = await own_array(session, tenant_id, ref.id)
        if ref.index >= array.size:
            raise NotFound(NOT_FOUND)
        job = await element_row(session, parent, ref.index)
        if job is None:  # not scheduled yet: no transition
            return []
    query = (
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.kind == "state")
        .order_by(JobEvent.id)
    )
    rows = list((await session.execute(query)).scalars())
    if not rows and not job.is_array:
        return synthesised(job)
    items = [_item(e.at, e.to_state, e.reason, e.attempt, e.worker) for e in rows]
    if job.queued_at is not None and not any(e.from_state == "PENDING" for e in rows):
        items.insert(0, _item(job.queued_at, JobState.QUEUED.value, job.state_reason, 0, None))
    return items


def synthesised(job: Job) -> list[HistoryItem]:
    """The history of a job without ``job_events`` rows (an element recorded by its chunk),
    from its row: queued, started, finished."""
    items = []
    if job.queued_at is not None:
        items.append(_item(job.queued_at, JobState.QUEUED.value, None, 0, None))
    if job.started_at is not None:
        items.append(_item(job.started_at, JobState.RUNNING.value, None, job.attempts, job.worker))
    if job.finished_at is not None:
        reason = job.state_reason or job.error
        items.append(_item(job.finished_at, job.state, reason, job.attempts, job.worker))
    return items


def _item(
    at: datetime, state: str, reason: str | None, attempt: int, worker: str | None
) -> HistoryItem:
    return HistoryItem(at=at, state=state, reason=reason, attempt=attempt, worker=worker)


__all__ = ["Row", "Stream", "events", "history", "position", "stream_target"]
