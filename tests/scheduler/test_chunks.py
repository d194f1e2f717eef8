"""The scheduler runs arrays without datasets in chunks: the materialise step cuts them into
chunks sized from the measured element time, the dispatch pass sends each chunk as one
candidate (one slot, one ``ChunkDispatched`` in the outbox), capacity and demand count
chunks, and the reaper re-queues a lost worker's chunk, fails its elements once its
attempts are used up, drops cancelled arrays' chunks and re-sends unclaimed ones."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler import service
from services.scheduler.chunks import reap_chunks
from services.scheduler.demand import pool_demand
from shared.db.models import ArrayChunk, Job, JobArray, JobAttempt, Outbox, Tenant, Worker
from shared.events import ChunkDispatched, JobDispatched, parse_event, utcnow
from shared.jobs.arrays import element_id
from shared.jobs.chunks import ChunkClaim, cancel_chunks, claim_chunk
from shared.jobs.states import JobState
from shared.jobs.store import session_fetch
from tests.factories import new_array

Sessions = async_sessionmaker[AsyncSession]
S = JobState


async def _tenant(s: Sessions) -> uuid.UUID:
    tid = uuid.uuid4()
    async with s() as session, session.begin():
        session.add(Tenant(id=tid, name=f"t{tid.hex[:8]}", weight=1, quotas={}))
    return tid


async def _array(
    s: Sessions, tid: uuid.UUID, size: int, *, wall_s: float | None = None, **fields: Any
) -> uuid.UUID:
    job, array = new_array(tid, size, **fields)
    array.element_wall_s = wall_s
    async with s() as session, session.begin():
        session.add(job)
        await session.flush()
        session.add(array)
    return job.id


async def _worker(s: Sessions, concurrency: int = 4) -> None:
    async with s() as session, session.begin():
        session.add(
            Worker(
                id="w1",
                device="cpu",
                concurrency=concurrency,
                stopping=False,
                heartbeat_at=utcnow(),
            )
        )


async def _materialise(s: Sessions, *, window: int = 256) -> int:
    engine = s.kw["bind"]
    return await service.materialise(
        engine, window=window, limit=1000, chunk_target_s=0.5, chunk_max=256
    )


async def _dispatch(s: Sessions) -> list[Any]:
    async with service.open_pass(s.kw["bind"], s) as db:
        fair = service.FairShareSettings(reserved_slots=0)
        return await service.dispatch(db, worker_ttl_s=15, slack=0.0, batch=500, fair=fair)


async def _chunks(s: Sessions, array_id: uuid.UUID) -> list[ArrayChunk]:
    async with s() as session:
        rows = await session.scalars(
            select(ArrayChunk)
            .where(ArrayChunk.array_id == array_id)
            .order_by(ArrayChunk.first_index)
        )
        return list(rows)


async def _claim(s: Sessions, chunk_id: uuid.UUID) -> ChunkClaim:
    async with s() as session, session.begin():
        claim = await claim_chunk(session_fetch(session), chunk_id, worker="w1", lease_s=30)
    assert claim is not None
    return claim


async def _expire(s: Sessions, chunk_id: uuid.UUID) -> None:
    async with s() as session, session.begin():
        await session.execute(
            text(
                "UPDATE array_chunks SET lease_expires_at = now() - interval '1 second'"
                " WHERE id = :id"
            ),
            {"id": chunk_id},
        )


async def _reap(s: Sessions) -> None:
    async with s() as session, session.begin():
        await reap_chunks(session=session, redispatch_after_s=60)


async def _counts(s: Sessions, array_id: uuid.UUID) -> dict[str, int]:
    """The array's counts, checked against its rows and chunks: a chunk's elements without a
    row are QUEUED (unclaimed) or RUNNING (claimed); the rest PENDING, or CANCELLED once
    the array is cancelled."""
    async with s() as session:
        a = await session.get_one(JobArray, array_id, populate_existing=True)
        stored = {st.value: getattr(a, f"n_{st.value.lower()}") for st in S}
        truth = dict.fromkeys(stored, 0)
        for state, n in await session.execute(
            select(Job.state, func.count()).where(Job.array_id == array_id).group_by(Job.state)
        ):
            truth[state] += n
        for c in await session.scalars(select(ArrayChunk).where(ArrayChunk.array_id == array_id)):
            rows = await session.scalar(
                select(func.count()).where(
                    Job.array_id == array_id,
                    Job.array_index >= c.first_index,
                    Job.array_index < c.first_index + c.n,
                )
            )
            truth["RUNNING" if c.worker else "QUEUED"] += c.n - int(rows or 0)
        truth["CANCELLED" if a.cancelled else "PENDING"] += a.size - sum(truth.values())
    assert stored == truth
    return stored


async def test_chunks_are_sized_from_the_measured_time(s: Sessions) -> None:
    tid = await _tenant(s)
    # other params than the measured array's: other work, not measured (a like array would
    # take its measure, test_chunks' test_an_array_like_a_measured_one_...)
    unknown = await _array(s, tid, 50, params={"samples": 2})
    measured = await _array(s, tid, 50, wall_s=0.02)  # 0.5 s / 0.02 s = 25 a chunk
    with_data = await _array(s, tid, 3, inputs={"x": "in-{index}"})
    await _materialise(s)
    assert [(c.first_index, c.n) for c in await _chunks(s, unknown)] == [(0, 8)]
    assert [(c.first_index, c.n) for c in await _chunks(s, measured)] == [(0, 25), (25, 25)]
    assert await _chunks(s, with_data) == []  # its elements get rows, as before
    async with s() as session:
        rows = await session.scalar(select(func.count()).where(Job.array_id == with_data))
    assert rows == 3
    assert (await _counts(s, measured))["QUEUED"] == 50
    assert (await _counts(s, unknown))["PENDING"] == 42


async def test_each_chunk_is_one_candidate_and_one_message(s: Sessions) -> None:
    tid = await _tenant(s)
    aid = await _array(s, tid, 100, wall_s=0.05)  # chunks of 10
    await _worker(s, concurrency=3)
    await _materialise(s)
    events = await _dispatch(s)
    chunks = await _chunks(s, aid)
    sent = [e for e in events if isinstance(e, ChunkDispatched)]
    assert not [e for e in events if isinstance(e, JobDispatched)]
    assert [e.chunk_id for e in sent] == [c.id for c in chunks[:3]]  # three slots
    assert {e.routing_key for e in sent} == {"job.dispatch.cpu"}
    assert [c.device for c in chunks[:4]] == ["cpu", "cpu", "cpu", None]
    async with s() as session:
        bodies = list(await session.scalars(select(Outbox.body)))
        cap = await service.session_capacity(session=session, worker_ttl_s=15)
    assert sorted(parse_event(b).chunk_id for b in bodies) == sorted(e.chunk_id for e in sent)  # type: ignore[attr-defined]
    assert cap.in_flight == {"cpu": 3}
    assert await _dispatch(s) == []  # every slot is taken
    await _counts(s, aid)


async def test_demand_counts_a_chunk_as_one_job(s: Sessions) -> None:
    tid = await _tenant(s)
    aid = await _array(s, tid, 20, wall_s=0.05)  # chunks of 10
    await _worker(s, concurrency=1)
    await _materialise(s)
    await _dispatch(s)
    await _claim(s, (await _chunks(s, aid))[0].id)
    async with s() as session:
        demand = await pool_demand(session=session, any_pool="cpu")
    assert (demand["cpu"].running, demand["cpu"].queued, demand["cpu"].blocked) == (1, 1, 0)


async def test_a_lost_workers_chunk_is_requeued_then_failed(s: Sessions) -> None:
    tid = await _tenant(s)
    aid = await _array(s, tid, 3, max_retries=1)
    await _materialise(s)
    [chunk] = await _chunks(s, aid)
    await _claim(s, chunk.id)
    await _expire(s, chunk.id)
    await _reap(s)
    [requeued] = await _chunks(s, aid)
    assert (requeued.worker, requeued.dispatched_at, requeued.attempt) == (None, None, 1)
    assert (await _counts(s, aid))["QUEUED"] == 3
    second = await _claim(s, chunk.id)
    assert second.attempt == 2
    await _expire(s, chunk.id)
    await _reap(s)  # two attempts used: max_retries + 1
    assert await _chunks(s, aid) == []
    async with s() as session:
        rows = list(await session.scalars(select(Job).where(Job.array_id == aid)))
        lost = await session.scalar(
            select(func.count()).where(JobAttempt.outcome == "LOST", JobAttempt.attempt == 2)
        )
        parent = await session.get_one(Job, aid)
    assert {(r.state, r.attempts, r.error) for r in rows} == {
        ("FAILED", 2, "worker lost while running the job")
    }
    assert lost == 3
    assert parent.state == "FAILED"
    assert (await _counts(s, aid))["FAILED"] == 3


async def test_a_cancelled_arrays_chunks_go_unless_a_worker_holds_them(s: Sessions) -> None:
    tid = await _tenant(s)
    aid = await _array(s, tid, 30, wall_s=0.05)  # chunks of 10
    await _materialise(s)
    held, *_ = await _chunks(s, aid)
    await _claim(s, held.id)
    async with s() as session, session.begin():
        await session.execute(
            update(JobArray)
            .where(JobArray.job_id == aid)
            .values(cancelled=True, n_cancelled=JobArray.n_pending, n_pending=0)
        )
        assert await cancel_chunks(session_fetch(session), aid) == 1
    assert [c.id for c in await _chunks(s, aid)] == [held.id]
    counts = await _counts(s, aid)
    assert (counts["RUNNING"], counts["CANCELLED"]) == (10, 20)
    await _expire(s, held.id)  # its worker is lost: the reaper drops it too
    await _reap(s)
    assert await _chunks(s, aid) == []
    assert (await _counts(s, aid))["CANCELLED"] == 30
    async with s() as session:
        parent = await session.get_one(Job, aid)
    assert parent.state == "CANCELLED"


async def test_an_unclaimed_chunk_is_sent_again(s: Sessions) -> None:
    tid = await _tenant(s)
    aid = await _array(s, tid, 4)
    await _worker(s)
    await _materialise(s)
    assert len(await _dispatch(s)) == 1
    [chunk] = await _chunks(s, aid)
    async with s() as session, session.begin():
        await session.execute(
            update(ArrayChunk)
            .where(ArrayChunk.id == chunk.id)
            .values(dispatched_at=func.now() - text("interval '2 minutes'"))
        )
    await _reap(s)
    [again] = await _chunks(s, aid)
    assert (again.dispatched_at, again.device) == (None, None)
    assert [e.chunk_id for e in await _dispatch(s)] == [chunk.id]
    assert chunk.id == element_id(aid, 0)  # a chunk's id is its first element's


async def test_kedas_fallback_counts_a_chunk_as_one_job(s: Sessions) -> None:
    """Without the scheduler's demand, KEDA (deploy/kubernetes/keda.yaml) counts each chunk
    once, as the scheduler's demand does, and the elements not in a chunk yet."""
    path = Path(__file__).parents[2] / "deploy" / "kubernetes" / "keda.yaml"
    queries = {}
    for doc in yaml.safe_load_all(path.read_text()):
        for trigger in doc["spec"].get("triggers", []) if doc["kind"] == "ScaledObject" else []:
            if trigger["type"] == "postgresql":
                sql = trigger["metadata"]["query"]
                queries["cuda" if "'cuda'" in sql else "cpu"] = sql
    tid = await _tenant(s)
    await _array(s, tid, 50, wall_s=0.05)  # chunks of 10
    await _materialise(s, window=20)
    async with s() as session:
        values = {pool: await session.scalar(text(q)) for pool, q in queries.items()}
    assert values == {"cpu": 2 + 30, "cuda": 0}
