"""``GET /v1/jobs/{id}/attempts`` and ``GET /v1/jobs/{id}/log``: what happened to a job, per
attempt and line by line.

Attempts: one record per attempt that ended (written where it ended: the worker's record,
the reaper; a ``job_attempts`` row, or an entry of a chunk flush's ``chunk_attempts`` row,
``shared.jobs.attempts``), and the running attempt from the job's own row (outcome null).

The log is put together when it is read, from what is stored anyway: the transitions
(``job_events`` of kind ``state``), the end of each attempt (its record: outcome, use,
error), and the lines the worker wrote besides (``job_log``: staging, kernel progress; written
in batches every 2 s, so a job that ends in under 2 s adds nothing there). One line each,
``<ISO time> [attempt N] <text>``, in time order. ``?follow=1`` streams the lines as they
come and ends once the job is final and every line is out. It reads again (three indexed
reads by job id) whenever the gateway's events hub sees an event of the tenant (a transition,
a progress flush: ``EventHub.wait_for_change``), at least every ``FOLLOW_POLL_S``; after the
job's final transition it waits ``LATE_LINES_S`` for the lines the worker flushes after the
attempt (stage-out lines go out with the next flush) and reads once more.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.deps import PrincipalDep, ResourcesDep, SessionDep, session_scope
from services.gateway.events.hub import EventHub
from services.gateway.jobs.elements import NOT_FOUND, element_row, job_ref, own_array, own_job
from services.gateway.jobs.routes import JobIdPath
from services.gateway.routing import feature_router
from shared.db.models import Job, JobAttempt, JobEvent, JobLogLine
from shared.errors import NotFound
from shared.jobs.attempts import ended_attempts
from shared.jobs.states import FINAL, JobState
from shared.runtime import Resources

router = feature_router(
    prefix="/v1",
    tag="jobs",
    errors={
        403: "key lacks the scope, or tenant suspended",
        404: "no such job for this tenant",
        422: "validation failed",
        429: "rate limit exceeded",
        503: "a dependency is down; retry after Retry-After",
    },
)

# How often ``?follow=1`` looks for new lines at least (an event of the tenant wakes it).
FOLLOW_POLL_S = 1.0
# How long it waits after the job's end for the worker's last lines (a flush interval, 2 s).
LATE_LINES_S = 3.0
# The kind of ``job_events`` row that is a transition (others: progress).
STATE_KIND = "state"


class AttemptOut(BaseModel):
    attempt: int
    worker: str | None
    device: str | None
    started_at: datetime | None
    finished_at: datetime | None
    cpu_seconds: float | None
    gpu_seconds: float | None
    outcome: str | None
    error: str | None


class AttemptList(BaseModel):
    items: list[AttemptOut]


@dataclass(frozen=True)
class Found:
    """The job a route's id names: its row (None for an array, or an element the scheduler
    has not materialised yet: no attempt, no line) and whether it is final."""

    job: Job | None
    final: bool


async def find(session: AsyncSession, tenant_id: uuid.UUID, text: str) -> Found:
    """The tenant's job, array or element ``text``; 404 for anything else."""
    ref = job_ref(text)
    if ref.index is None:
        job = await own_job(session, tenant_id, ref.id)
        if job is None:
            raise NotFound(NOT_FOUND)
        final = JobState(job.state) in FINAL
        return Found(None if job.is_array else job, final)
    parent, array = await own_array(session, tenant_id, ref.id)
    if ref.index >= array.size:
        raise NotFound(NOT_FOUND)
    row = await element_row(session, parent, ref.index)
    if row is None:  # not materialised: final only if its array was cancelled
        return Found(None, bool(array.cancelled) or JobState(parent.state) in FINAL)
    return Found(row, JobState(row.state) in FINAL)


# --- attempts ------------------------------------------------------------------------


async def attempts_of(session: AsyncSession, job: Job | None) -> list[AttemptOut]:
    if job is None:
        return []
    rows = await ended_attempts(session, job.id)
    items = [
        AttemptOut(
            attempt=a.attempt,
            worker=a.worker,
            device=a.device,
            started_at=a.started_at,
            finished_at=a.finished_at,
            cpu_seconds=a.cpu_seconds,
            gpu_seconds=a.gpu_seconds,
            outcome=a.outcome,
            error=a.error,
        )
        for a in rows
    ]
    ended = {a.attempt for a in items}
    if job.state == JobState.RUNNING.value and job.attempts not in ended:
        items.append(
            AttemptOut(
                attempt=job.attempts,
                worker=job.worker,
                device=job.assigned_device,
                started_at=job.started_at,
                finished_at=None,
                cpu_seconds=None,
                gpu_seconds=None,
                outcome=None,
                error=None,
            )
        )
    return items


@router.get("/jobs/{job_id}/attempts")
async def list_attempts(
    job_id: JobIdPath, principal: PrincipalDep, session: SessionDep
) -> AttemptList:
    """The job's attempts, oldest first: each that ended with its outcome and use, and the
    running one (``outcome`` null). An array has none (its elements do)."""
    tenant_id = principal.require_tenant("jobs:read")
    found = await find(session, tenant_id, job_id)
    return AttemptList(items=await attempts_of(session, found.job))


# --- the log -------------------------------------------------------------------------


def stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def line(at: datetime, attempt: int, text: str) -> str:
    return f"{stamp(at)} [attempt {attempt}] {' '.join(text.splitlines())}\n"


def transition_text(e: JobEvent) -> str:
    text = f"{e.from_state} -> {e.to_state}"
    if e.worker:
        text += f" on {e.worker}"
    return f"{text}: {e.reason}" if e.reason else text


def attempt_text(a: JobAttempt) -> str:
    text = (
        f"attempt ended {a.outcome} after {a.wall_seconds:.3f} s"
        f" ({a.cpu_seconds:.3f} CPU s, {a.gpu_seconds:.3f} GPU s)"
    )
    return f"{text}; error: {a.error}" if a.error else text


@dataclass
class Cursor:
    """What a log read has shown so far: the last ``job_events`` and ``job_log`` ids, the
    attempts whose end it showed."""

    event_id: int = 0
    log_id: int = 0
    attempts: set[int] = field(default_factory=set)


async def new_lines(session: AsyncSession, job_id: uuid.UUID, cursor: Cursor) -> list[str]:
    """The job's lines ``cursor`` has not shown, in time order; moves ``cursor`` past them."""
    keyed: list[tuple[datetime, int, int, str]] = []
    events = (
        await session.execute(
            select(JobEvent)
            .where(
                JobEvent.job_id == job_id,
                JobEvent.id > cursor.event_id,
                JobEvent.kind == STATE_KIND,
            )
            .order_by(JobEvent.id)
        )
    ).scalars()
    for e in events:
        keyed.append((e.at, 0, e.id, line(e.at, e.attempt, transition_text(e))))
        cursor.event_id = max(cursor.event_id, e.id)
    logged = (
        await session.execute(
            select(JobLogLine)
            .where(JobLogLine.job_id == job_id, JobLogLine.id > cursor.log_id)
            .order_by(JobLogLine.id)
        )
    ).scalars()
    for g in logged:
        keyed.append((g.at, 1, g.id, line(g.at, g.attempt, g.line)))
        cursor.log_id = max(cursor.log_id, g.id)
    for a in await ended_attempts(session, job_id, skip=cursor.attempts):
        keyed.append((a.finished_at, 2, a.attempt, line(a.finished_at, a.attempt, attempt_text(a))))
        cursor.attempts.add(a.attempt)
    keyed.sort(key=lambda k: (k[0], k[1], k[2]))
    return [k[3] for k in keyed]


async def follow(
    res: Resources,
    hub: EventHub | None,
    tenant_id: uuid.UUID,
    text: str,
    first: list[str],
    cursor: Cursor,
    done: bool,
) -> AsyncIterator[str]:
    """The lines read so far, then each new one, until the job is final and all are out."""
    for item in first:
        yield item
    if done:
        return
    while not done:
        if hub is not None:
            await hub.wait_for_change(tenant_id, FOLLOW_POLL_S)
        else:
            await asyncio.sleep(FOLLOW_POLL_S)
        done, lines = await _read(res, tenant_id, text, cursor)
        for item in lines:
            yield item
    await asyncio.sleep(LATE_LINES_S)
    for item in (await _read(res, tenant_id, text, cursor))[1]:
        yield item


async def _read(
    res: Resources, tenant_id: uuid.UUID, text: str, cursor: Cursor
) -> tuple[bool, list[str]]:
    """Whether the job is final, and its lines ``cursor`` has not shown."""
    async with session_scope(res) as session:
        found = await find(session, tenant_id, text)
        # final read before the lines: the lines of its last transition are in this read
        lines = await new_lines(session, found.job.id, cursor) if found.job else []
        return found.final, lines


@router.get(
    "/jobs/{job_id}/log",
    response_class=PlainTextResponse,
    response_model=None,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def job_log(
    job_id: JobIdPath,
    principal: PrincipalDep,
    session: SessionDep,
    res: ResourcesDep,
    request: Request,
    follow_: Annotated[
        bool,
        Query(alias="follow", description="stream new lines until the job is final"),
    ] = False,
) -> Response:
    """The job's log, every attempt, one line each: ``<ISO time> [attempt N] <text>``
    (transitions, staging, kernel progress, each attempt's end and error), oldest first.
    ``?follow=1`` streams until the job is final."""
    tenant_id = principal.require_tenant("jobs:read")
    found = await find(session, tenant_id, job_id)
    cursor = Cursor()
    lines = await new_lines(session, found.job.id, cursor) if found.job else []
    if not follow_:
        return PlainTextResponse("".join(lines))
    return StreamingResponse(
        follow(
            res,
            getattr(request.app.state, "events_hub", None),
            tenant_id,
            job_id,
            lines,
            cursor,
            found.final,
        ),
        media_type="text/plain; charset=utf-8",
    )
