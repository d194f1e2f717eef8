"""Elements of an array run in chunks, through the API: an element in a chunk reads QUEUED
(RUNNING with its worker once the chunk is claimed) until its flush gives it its row; the
state filter finds chunk elements; an array's cancel drops the chunks no worker holds at once
and tells the holder of the others; an element cancelled on its own in a chunk is counted
once."""

from __future__ import annotations

import uuid

import httpx
import orjson
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.gateway.jobs import cancel
from services.gateway.jobs.chunked import IN_CHUNK
from shared.db.models import ArrayChunk, ChunkAttempt, JobArray, JobAttempt, Outbox
from shared.events import utcnow
from shared.jobs.arrays import element_id
from shared.jobs.attempts import AttemptRecord
from shared.jobs.chunks import ChunkClaim, ElementOutcome, Flushed, claim_chunk, record_elements
from shared.jobs.states import JobState
from shared.jobs.store import session_fetch
from shared.jobs.usage import count_attempt
from tests.factories import new_array
from tests.gateway.array_rows import counts, get
from tests.gateway.conftest import TenantKey
from tests.gateway.test_jobs_api import assert_problem

Sessions = async_sessionmaker[AsyncSession]


async def chunked_array(sessions: Sessions, tenant: TenantKey, size: int, *sizes: int) -> uuid.UUID:
    """An array without datasets whose first elements are in chunks of ``sizes``, as the
    scheduler's ``materialise_chunks`` leaves them (QUEUED, unclaimed)."""
    async with sessions() as s, s.begin():
        job, array = new_array(uuid.UUID(tenant.tenant_id), size, index_param="seed")
        s.add(job)
        await s.flush()
        taken = sum(sizes)
        array.next_index = taken
        array.n_pending = size - taken
        array.n_queued = taken
        s.add(array)
        await s.flush()
        first = 0
        for n in sizes:
            s.add(
                ArrayChunk(
                    id=element_id(job.id, first),
                    array_id=job.id,
                    tenant_id=job.tenant_id,
                    first_index=first,
                    n=n,
                    attempt=0,
                )
            )
            first += n
    return job.id


async def claim(sessions: Sessions, chunk_id: uuid.UUID) -> ChunkClaim:
    async with sessions() as s, s.begin():
        claimed = await claim_chunk(session_fetch(s), chunk_id, worker="w1", lease_s=60)
    assert claimed is not None
    return claimed


async def record(
    sessions: Sessions, c: ChunkClaim, states: dict[int, JobState], *, last: bool = False
) -> Flushed:
    now = utcnow()
    outcomes = [
        ElementOutcome(
            i,
            st,
            {"pi": 3.1} if st is JobState.SUCCEEDED else None,
            None,
            False,
            0.001,
            0.001,
            now,
            now,
        )
        for i, st in states.items()
    ]
    async with sessions() as s, s.begin():
        return await record_elements(session_fetch(s), c, outcomes, worker="w1", last=last)


async def states(client: httpx.AsyncClient, tenant: TenantKey, path: str) -> list[str]:
    return [e["state"] for e in (await get(client, tenant, path))["items"]]


async def test_an_element_in_a_chunk_reads_as_its_chunk(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    aid = await chunked_array(sessions, tenant, 6, 4)
    one = await get(client, tenant, f"/v1/jobs/{aid}:1")
    assert (one["state"], one["state_reason"], one["worker"]) == ("QUEUED", IN_CHUNK, None)
    assert one["params"] == {"samples": 1, "seed": 1}
    assert (
        await states(client, tenant, f"/v1/jobs/{aid}/elements") == ["QUEUED"] * 4 + ["PENDING"] * 2
    )
    c = await claim(sessions, element_id(aid, 0))  # a chunk's id is its first element's
    one = await get(client, tenant, f"/v1/jobs/{aid}:1")
    assert (one["state"], one["worker"], one["attempts"]) == ("RUNNING", "w1", 1)
    await record(sessions, c, {0: JobState.SUCCEEDED})
    assert await states(client, tenant, f"/v1/jobs/{aid}/elements") == [
        "SUCCEEDED",
        "RUNNING",
        "RUNNING",
        "RUNNING",
        "PENDING",
        "PENDING",
    ]
    running = (await get(client, tenant, f"/v1/jobs/{aid}/elements?state=RUNNING"))["items"]
    assert [e["id"] for e in running] == [f"{aid}:{i}" for i in (1, 2, 3)]
    page = await get(client, tenant, f"/v1/jobs/{aid}/elements?state=RUNNING&limit=2")
    assert [e["array_index"] for e in page["items"]] == [1, 2]
    assert page["next_cursor"] == "3"
    body = await get(client, tenant, f"/v1/jobs/{aid}")
    assert body["array"]["counts"] == counts(succeeded=1, running=3, pending=2)


async def test_cancel_drops_free_chunks_and_tells_the_worker_of_a_held_one(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    aid = await chunked_array(sessions, tenant, 10, 3, 3)
    held = await claim(sessions, element_id(aid, 0))
    async with sessions() as s, s.begin():  # the staged events, before the relay takes them
        out = await cancel.cancel(
            session=s, tenant_id=uuid.UUID(tenant.tenant_id), text_id=str(aid)
        )
        bodies = [
            orjson.loads(b)
            for b in await s.scalars(
                select(Outbox.body).where(Outbox.routing_key == "job.cancelled")
            )
        ]
    assert out.state == "CANCELLED"
    assert out.array is not None
    assert out.array.counts == counts(cancelled=10)
    told = [b for b in bodies if b["job_id"] == str(aid)]
    assert [b["worker"] for b in told] == ["w1"]  # the holder of the chunk is told to stop
    async with sessions() as s:
        left = list(await s.scalars(select(ArrayChunk.id).where(ArrayChunk.array_id == aid)))
    assert left == [held.chunk_id]  # the held chunk stays with its worker
    assert_problem(await client.post(f"/v1/jobs/{aid}/cancel", headers=tenant.headers), 409)
    assert await states(client, tenant, f"/v1/jobs/{aid}/elements") == ["CANCELLED"] * 10
    cancelled = await get(client, tenant, f"/v1/jobs/{aid}/elements?state=CANCELLED&limit=20")
    assert [e["array_index"] for e in cancelled["items"]] == list(range(10))
    assert [e["attempts"] for e in cancelled["items"][:4]] == [1, 1, 1, 0]  # held ones ran
    # the worker's flush of what ran: the rows stay CANCELLED, the attempts are charged
    flushed = await record(sessions, held, {0: JobState.SUCCEEDED})
    assert flushed.cancelled
    assert flushed.recorded == 0
    await record(sessions, held, {1: JobState.CANCELLED, 2: JobState.CANCELLED}, last=True)
    ids = [element_id(aid, i) for i in (0, 1, 2)]
    async with sessions() as s:
        charged = await s.scalar(select(func.count()).where(AttemptRecord.job_id.in_(ids)))
        chunks_left = await s.scalar(select(func.count()).where(ArrayChunk.array_id == aid))
    assert (charged, chunks_left) == (3, 0)
    body = await get(client, tenant, f"/v1/jobs/{aid}")
    assert (body["state"], body["array"]["counts"]) == ("CANCELLED", counts(cancelled=10))


async def test_an_element_cancelled_in_a_chunk_is_counted_once(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    aid = await chunked_array(sessions, tenant, 4, 4)
    r = await client.post(f"/v1/jobs/{aid}:2/cancel", headers=tenant.headers)
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "CANCELLED"
    body = await get(client, tenant, f"/v1/jobs/{aid}")
    assert body["array"]["counts"] == counts(queued=3, cancelled=1)
    c = await claim(sessions, element_id(aid, 0))
    assert [e.index for e in c.elements] == [0, 1, 3]
    # a worker that runs it anyway records nothing for it
    flushed = await record(sessions, c, dict.fromkeys(range(4), JobState.SUCCEEDED), last=True)
    assert flushed.recorded == 3
    async with sessions() as s:
        array = await s.get_one(JobArray, aid, populate_existing=True)
    assert (array.n_succeeded, array.n_cancelled, array.n_running) == (3, 1, 0)
    assert (await get(client, tenant, f"/v1/jobs/{aid}:2"))["state"] == "CANCELLED"


async def test_an_element_cancelled_in_a_held_chunk_is_charged_for_what_ran(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    aid = await chunked_array(sessions, tenant, 3, 3)
    c = await claim(sessions, element_id(aid, 0))
    r = await client.post(f"/v1/jobs/{aid}:1/cancel", headers=tenant.headers)
    assert r.status_code == 202, r.text
    assert (r.json()["state"], r.json()["attempts"]) == ("CANCELLED", 1)
    body = await get(client, tenant, f"/v1/jobs/{aid}")
    assert body["array"]["counts"] == counts(running=2, cancelled=1)
    flushed = await record(sessions, c, dict.fromkeys(range(3), JobState.SUCCEEDED), last=True)
    assert flushed.recorded == 2
    async with sessions() as s:
        charged = await s.scalar(
            select(func.count()).where(AttemptRecord.job_id == element_id(aid, 1))
        )
    assert charged == 1
    body = await get(client, tenant, f"/v1/jobs/{aid}")
    assert body["array"]["counts"] == counts(succeeded=2, cancelled=1)


async def test_a_chunk_elements_attempts_and_usage_come_from_its_flush_row(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    """A flush records its elements' attempts in one ``chunk_attempts`` row: the attempts
    route, the log, ``GET /v1/usage`` and the hourly buckets read each element's attempt
    from it, once, beside the ``job_attempts`` rows of the element's later attempts."""
    aid = await chunked_array(sessions, tenant, 3, 3)
    c = await claim(sessions, element_id(aid, 0))
    await record(sessions, c, {0: JobState.SUCCEEDED, 1: JobState.FAILED})
    await record(sessions, c, {2: JobState.TIMED_OUT}, last=True)
    tid = uuid.UUID(tenant.tenant_id)
    async with sessions() as s, s.begin():
        rows = await s.scalar(select(func.count()).where(ChunkAttempt.array_id == aid))
        per_job = await s.scalar(
            select(func.count()).where(
                JobAttempt.job_id.in_([element_id(aid, i) for i in range(3)])
            )
        )
        # a later attempt of element 1, by the per-job path
        await count_attempt(
            s,
            job_id=element_id(aid, 1),
            tenant_id=tid,
            attempt=2,
            worker="w2",
            outcome="SUCCEEDED",
            cpu_seconds=0.5,
            wall_seconds=0.5,
        )
    assert (rows, per_job) == (2, 0)  # one row per flush, none per element
    one = (await get(client, tenant, f"/v1/jobs/{aid}:1/attempts"))["items"]
    assert [(a["attempt"], a["outcome"], a["worker"]) for a in one] == [
        (1, "FAILED", "w1"),
        (2, "SUCCEEDED", "w2"),
    ]
    assert (one[0]["device"], one[0]["cpu_seconds"]) == ("cpu", 0.001)
    assert one[0]["started_at"] is not None
    assert one[0]["finished_at"] is not None
    two = (await get(client, tenant, f"/v1/jobs/{aid}:2/attempts"))["items"]
    assert [(a["attempt"], a["outcome"]) for a in two] == [(1, "TIMED_OUT")]
    r = await client.get(f"/v1/jobs/{aid}:0/log", headers=tenant.headers)
    assert r.status_code == 200, r.text
    assert r.text.count("attempt ended SUCCEEDED") == 1
    usage = await get(client, tenant, "/v1/usage?group_by=kernel")
    assert abs(usage["cpu_seconds"] - 0.503) < 1e-9
    assert [(g["key"], g["jobs"]) for g in usage["groups"]] == [("montecarlo_pi", 3)]
    async with sessions() as s:
        attempts, cpu = (
            await s.execute(
                text(
                    "SELECT sum(attempts), sum(cpu_seconds) FROM usage_hours WHERE tenant_id = :t"
                ),
                {"t": tid},
            )
        ).one()
    assert (attempts, round(cpu, 9)) == (4, 0.503)
