"""An array run in chunks moves on ``GET /v1/events``: each chunk flush that records elements
is one ``job.progress`` event of the array, with its counts as the flush left them, and the
array's end is its ``job.state`` event; no event per element. Against real gateway
processes (``test_events``' fixture), the flushes written as the worker writes them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import ArrayChunk
from shared.jobs.arrays import element_id
from shared.jobs.chunks import ChunkClaim, ElementOutcome, claim_chunk, record_elements
from shared.jobs.states import JobState
from shared.jobs.store import session_fetch
from tests.factories import new_array
from tests.gateway.test_events import (  # noqa: F401 (gateways: the fixture)
    Gateway,
    gateways,
    last_id,
    make_tenant,
    nothing_more,
    stream,
)

pytestmark = pytest.mark.timeout(300)

Sessions = async_sessionmaker[AsyncSession]
STATES = ("PENDING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


def counts(**given: int) -> dict[str, int]:
    return {s: given.get(s.lower(), 0) for s in STATES}


async def chunked(sessions: Sessions, tenant_id: uuid.UUID, size: int) -> uuid.UUID:
    """An array of ``size`` whose elements are one chunk, unclaimed (as the scheduler's
    ``materialise_chunks`` leaves it)."""
    async with sessions() as s, s.begin():
        job, array = new_array(tenant_id, size, index_param="seed")
        s.add(job)
        await s.flush()
        array.next_index = size
        array.n_pending = 0
        array.n_queued = size
        s.add(array)
        await s.flush()
        s.add(
            ArrayChunk(
                id=element_id(job.id, 0),
                array_id=job.id,
                tenant_id=tenant_id,
                first_index=0,
                n=size,
                attempt=0,
            )
        )
    return job.id


async def flush(
    sessions: Sessions, claim: ChunkClaim, states: dict[int, JobState], *, last: bool = False
) -> None:
    now = datetime.now(UTC)
    outcomes = [
        ElementOutcome(i, st, None, None, False, 0.01, 0.01, now, now) for i, st in states.items()
    ]
    async with sessions() as s, s.begin():
        await record_elements(session_fetch(s), claim, outcomes, worker="w1", last=last)


async def test_each_flush_is_one_progress_event_of_the_array_with_its_counts(
    gateways: tuple[Gateway, Gateway],  # noqa: F811 (the fixture imported above)
    sessions: Sessions,
) -> None:
    a, _ = gateways
    tenant = await make_tenant(a.url)
    aid = await chunked(sessions, tenant.id, 4)
    async with sessions() as s, s.begin():
        claim = await claim_chunk(session_fetch(s), element_id(aid, 0), worker="w1", lease_s=60)
    assert claim is not None
    start = await last_id(sessions)
    await flush(sessions, claim, {0: JobState.SUCCEEDED, 1: JobState.SUCCEEDED})
    await flush(sessions, claim, {2: JobState.FAILED})
    await flush(sessions, claim, {3: JobState.SUCCEEDED}, last=True)
    params = {"after": str(start), "job": str(aid)}
    async with stream(a.url, tenant, params=params) as (seen, read):
        await read(5)  # three flushes, the array's start and its end
        await nothing_more(read, within=2.0)
    names = [(e["event"], e["data"]["state"]) for e in seen.events]
    assert names == [
        ("job.progress", "RUNNING"),
        ("job.state", "RUNNING"),  # the array's own transitions, as before
        ("job.progress", "RUNNING"),
        ("job.progress", "FAILED"),
        ("job.state", "FAILED"),
    ]
    progress = [e["data"] for e in seen.events if e["event"] == "job.progress"]
    assert {d["job_id"] for d in progress} == {str(aid)}
    assert [d["progress"] for d in progress] == [0.5, 0.75, 1.0]
    assert [d["counts"] for d in progress] == [
        counts(running=2, succeeded=2),
        counts(running=1, succeeded=2, failed=1),
        counts(succeeded=3, failed=1),
    ]
    assert all("array_index" not in d for d in progress)  # the array's, not an element's
    # a repeated flush records nothing and says nothing
    await flush(sessions, claim, {0: JobState.SUCCEEDED})
    after = {"after": seen.events[-1]["id"], "job": str(aid)}
    async with stream(a.url, tenant, params=after) as (_, read):
        await nothing_more(read, within=2.0)
