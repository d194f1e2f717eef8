"""Array chunks against a real database (``shared.jobs.chunks``, ``materialise_chunks``): a
claim returns only the elements without a row; a flush inserts final rows with their usage
rows, exactly once; a stale attempt is fenced; a retryable failure becomes a QUEUED row; the
last flush deletes the chunk; and after every step the array's counts equal a count over its
element rows and chunks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import ArrayChunk, Job, JobArray, Tenant
from shared.events import utcnow
from shared.jobs.arrays import element_id, element_of
from shared.jobs.attempts import AttemptRecord
from shared.jobs.chunks import (
    FIRST_CHUNK,
    ChunkClaim,
    ElementOutcome,
    Flushed,
    chunk_size,
    claim_chunk,
    extend_leases,
    hand_back,
    record_elements,
)
from shared.jobs.materialise import materialise_chunks, materialise_elements
from shared.jobs.states import JobState
from shared.jobs.store import session_fetch
from shared.settings import CommonSettings
from tests.factories import new_array, own_database

Sessions = async_sessionmaker[AsyncSession]
S = JobState
LEASE_S = 30.0


@pytest.fixture(scope="module")
async def db(settings: CommonSettings) -> AsyncIterator[Sessions]:
    async with own_database(settings, "chunks") as (_, sessions):
        yield sessions


@pytest.fixture(autouse=True)
async def _empty(db: Sessions) -> None:
    """Each test alone with its arrays (the steps take every open array in the database)."""
    async with db() as session, session.begin():
        await session.execute(text("TRUNCATE tenants CASCADE"))


async def _array(db: Sessions, size: int, **fields: Any) -> uuid.UUID:
    tid = uuid.uuid4()
    job, array = new_array(tid, size, **fields)
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"c{tid.hex[:8]}", weight=1, quotas={}))
        await session.flush()
        session.add(job)
        await session.flush()
        session.add(array)
    return job.id


async def _chunks(db: Sessions, *, window: int = 256, limit: int = 1000) -> int:
    async with db() as session, session.begin():
        return await materialise_chunks(
            session_fetch(session), window=window, limit=limit, target_s=0.5, chunk_max=256
        )


async def _chunk_ids(db: Sessions, array_id: uuid.UUID) -> list[uuid.UUID]:
    async with db() as session:
        rows = await session.scalars(
            select(ArrayChunk.id)
            .where(ArrayChunk.array_id == array_id)
            .order_by(ArrayChunk.first_index)
        )
        return list(rows)


async def _claim(db: Sessions, chunk_id: uuid.UUID, worker: str = "w1") -> ChunkClaim | None:
    async with db() as session, session.begin():
        return await claim_chunk(session_fetch(session), chunk_id, worker=worker, lease_s=LEASE_S)


async def _record(
    db: Sessions,
    claim: ChunkClaim,
    outcomes: list[ElementOutcome],
    *,
    worker: str = "w1",
    last: bool = False,
) -> Flushed:
    async with db() as session, session.begin():
        return await record_elements(
            session_fetch(session), claim, outcomes, worker=worker, last=last
        )


def _done(
    index: int,
    state: JobState = S.SUCCEEDED,
    *,
    retryable: bool = False,
    wall: float = 0.002,
) -> ElementOutcome:
    now = utcnow()
    return ElementOutcome(
        index=index,
        state=state,
        result={"pi": 3.14, "i": index} if state is S.SUCCEEDED else None,
        error=None if state is S.SUCCEEDED else "boom",
        retryable=retryable,
        cpu_seconds=0.001,
        wall_seconds=wall,
        started_at=now - timedelta(seconds=wall),
        finished_at=now,
    )


async def _counts(db: Sessions, array_id: uuid.UUID) -> dict[str, int]:
    async with db() as session:
        a = await session.get_one(JobArray, array_id, populate_existing=True)
        return {s.value: getattr(a, f"n_{s.value.lower()}") for s in S}


async def _truth(db: Sessions, array_id: uuid.UUID) -> dict[str, int]:
    """The counts as the rows and chunks say: rows by state; a chunk's elements without a
    row QUEUED (unclaimed) or RUNNING (claimed); every other element PENDING, or CANCELLED
    once the array is cancelled."""
    out = dict.fromkeys((s.value for s in S), 0)
    async with db() as session:
        array = await session.get_one(JobArray, array_id, populate_existing=True)
        for state, n in await session.execute(
            select(Job.state, func.count()).where(Job.array_id == array_id).group_by(Job.state)
        ):
            out[state] += n
        for chunk in await session.scalars(
            select(ArrayChunk).where(ArrayChunk.array_id == array_id)
        ):
            rows = await session.scalar(
                select(func.count()).where(
                    Job.array_id == array_id,
                    Job.array_index >= chunk.first_index,
                    Job.array_index < chunk.first_index + chunk.n,
                )
            )
            out["RUNNING" if chunk.worker else "QUEUED"] += chunk.n - int(rows or 0)
    rest = array.size - sum(out.values())
    out["CANCELLED" if array.cancelled else "PENDING"] += rest
    return out


async def _exact(db: Sessions, array_id: uuid.UUID) -> dict[str, int]:
    counts = await _counts(db, array_id)
    assert counts == await _truth(db, array_id)
    return counts


async def test_the_first_chunk_is_small_and_its_elements_are_queued(db: Sessions) -> None:
    array_id = await _array(db, 20)
    assert await _chunks(db) == 1
    async with db() as session:
        chunk = (
            await session.scalars(select(ArrayChunk).where(ArrayChunk.array_id == array_id))
        ).one()
        array = await session.get_one(JobArray, array_id)
    assert (chunk.first_index, chunk.n, chunk.attempt, chunk.worker) == (0, FIRST_CHUNK, 0, None)
    assert array.next_index == FIRST_CHUNK
    counts = await _exact(db, array_id)
    assert (counts["QUEUED"], counts["PENDING"]) == (FIRST_CHUNK, 20 - FIRST_CHUNK)


async def test_an_array_like_a_measured_one_is_cut_at_once_by_its_measure(db: Sessions) -> None:
    """An array not measured yet, of the same kernel, device, params and index parameter as
    a measured array of its tenant, is cut by that measure in its first pass (no 8-element
    chunk to measure it first); one that differs in its params starts small."""
    tid = uuid.uuid4()
    measured, done = new_array(tid, 10, index_param="seed")
    done.next_index, done.n_pending, done.n_succeeded = 10, 0, 10
    done.element_wall_s = 0.001
    like, like_array = new_array(tid, 40, index_param="seed")
    other, other_array = new_array(tid, 40, index_param="seed", params={"samples": 2})
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"c{tid.hex[:8]}", weight=1, quotas={}))
        await session.flush()
        session.add_all([measured, like, other])
        await session.flush()
        session.add_all([done, like_array, other_array])
    assert await _chunks(db) == 2
    async with db() as session:
        cut = {c.array_id: c.n for c in await session.scalars(select(ArrayChunk))}
    assert cut == {like.id: 40, other.id: FIRST_CHUNK}


async def test_the_element_step_leaves_chunked_arrays_alone(db: Sessions) -> None:
    array_id = await _array(db, 5)
    async with db() as session, session.begin():
        fetch = session_fetch(session)
        assert await materialise_elements(fetch, window=256, limit=1000, chunked=True) == 0
    assert await _chunk_ids(db, array_id) == []
    assert (await _exact(db, array_id))["PENDING"] == 5


async def test_a_claim_runs_only_the_elements_without_a_row(db: Sessions) -> None:
    array_id = await _array(db, 6, index_param="seed", overrides=[{"samples": 7}])
    await _chunks(db)
    [chunk_id] = await _chunk_ids(db, array_id)
    claim = await _claim(db, chunk_id)
    assert claim is not None
    await _record(db, claim, [_done(2)])
    await _hand_back(db, claim)
    again = await _claim(db, chunk_id, worker="w2")
    assert again is not None
    assert again.attempt == 1
    assert [e.index for e in again.elements] == [0, 1, 3, 4, 5]
    async with db() as session:
        parent = await session.get_one(Job, array_id)
    zero = element_of(
        params=parent.params,
        inputs={},
        outputs={},
        index=0,
        index_param="seed",
        overrides=[{"samples": 7}],
    )
    assert again.elements[0].params == zero.params == {"samples": 7, "seed": 0}
    assert again.elements[0].job_id == element_id(array_id, 0)
    assert (again.kernel, again.device, again.timeout_s) == ("montecarlo_pi", "cpu", 60)
    assert await _claim(db, chunk_id, worker="w3") is None  # held by w2
    counts = await _exact(db, array_id)
    assert (counts["RUNNING"], counts["SUCCEEDED"]) == (5, 1)


async def _hand_back(db: Sessions, claim: ChunkClaim, worker: str = "w1") -> None:
    async with db() as session, session.begin():
        await hand_back(session_fetch(session), claim, worker=worker)


async def test_a_flush_records_final_rows_with_usage_exactly_once(db: Sessions) -> None:
    array_id = await _array(db, 4)
    await _chunks(db)
    [chunk_id] = await _chunk_ids(db, array_id)
    claim = await _claim(db, chunk_id)
    assert claim is not None
    assert [e.index for e in claim.elements] == [0, 1, 2, 3]
    assert (await _exact(db, array_id))["RUNNING"] == 4
    outcomes = [_done(0), _done(1, S.TIMED_OUT)]
    first = await _record(db, claim, outcomes)
    assert first == Flushed(recorded=2, cancelled=False, fenced=False)
    repeat = await _record(db, claim, outcomes)
    assert repeat == Flushed(recorded=0, cancelled=False, fenced=False)
    async with db() as session:
        row = await session.get_one(Job, element_id(array_id, 0))
        usage = (
            await session.scalars(
                select(AttemptRecord).where(
                    AttemptRecord.job_id.in_([row.id, element_id(array_id, 1)])
                )
            )
        ).all()
    assert (row.state, row.attempts, row.worker, row.result) == (
        "SUCCEEDED",
        1,
        "w1",
        {"pi": 3.14, "i": 0},
    )
    assert row.started_at is not None
    assert row.finished_at is not None
    assert row.array_index == 0
    assert row.assigned_device == "cpu"
    assert sorted(u.outcome for u in usage) == ["SUCCEEDED", "TIMED_OUT"]
    assert {(u.device, u.started_at is not None) for u in usage} == {("cpu", True)}
    assert row.progress == 1.0
    counts = await _exact(db, array_id)
    assert (counts["RUNNING"], counts["SUCCEEDED"], counts["TIMED_OUT"]) == (2, 1, 1)


async def test_a_recorded_element_has_its_receipt_in_one_row_write(db: Sessions) -> None:
    """One row write an element, and one a flush: the element's row, with the receipt's CPU
    seconds already in it, and the flush's one usage row (``chunk_attempts``) for all its
    elements, both by the flush's one command; the receipt's trigger does not write the
    element's row again (a later command would give its row version a later ``cmin``)."""
    array_id = await _array(db, 2)
    await _chunks(db)
    [chunk_id] = await _chunk_ids(db, array_id)
    claim = await _claim(db, chunk_id)
    assert claim is not None
    async with db() as session, session.begin():
        await record_elements(
            session_fetch(session), claim, [_done(0), _done(1)], worker="w1", last=False
        )
        versions = (
            await session.execute(
                text(
                    "SELECT j.cmin::text, a.cmin::text FROM jobs j"
                    " JOIN chunk_attempts a ON a.array_id = j.array_id"
                    " AND j.array_index = ANY(a.indices) WHERE j.array_id = :a"
                ),
                {"a": array_id},
            )
        ).all()
    assert len(versions) == 2
    assert all(job == usage for job, usage in versions), versions
    async with db() as session:
        flushes = await session.scalar(
            text("SELECT count(*) FROM chunk_attempts WHERE array_id = :a"), {"a": array_id}
        )
        per_element = await session.scalar(
            text(
                "SELECT count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id"
                " WHERE j.array_id = :a"
            ),
            {"a": array_id},
        )
    assert (flushes, per_element) == (1, 0)
    async with db() as session:
        row = await session.get_one(Job, element_id(array_id, 1))
    assert row.receipt is not None
    assert row.receipt["cpu_seconds"] == 0.001
    assert (row.receipt["kernel"], row.receipt["worker"]) == (row.kernel, "w1")


async def test_the_last_flush_deletes_the_chunk_and_ends_the_array(db: Sessions) -> None:
    array_id = await _array(db, 3)
    await _chunks(db)
    [chunk_id] = await _chunk_ids(db, array_id)
    claim = await _claim(db, chunk_id)
    assert claim is not None
    await _record(db, claim, [_done(0, wall=0.01)])
    # a last flush that leaves an element unreported keeps the chunk (the reaper takes it)
    await _record(db, claim, [_done(1, wall=0.01)], last=True)
    assert await _chunk_ids(db, array_id) == [chunk_id]
    done = await _record(db, claim, [_done(2, wall=0.01)], last=True)
    assert done.recorded == 1
    assert await _chunk_ids(db, array_id) == []
    counts = await _exact(db, array_id)
    assert counts["SUCCEEDED"] == 3
    async with db() as session:
        parent = await session.get_one(Job, array_id)
        array = await session.get_one(JobArray, array_id)
    assert parent.state == "SUCCEEDED"
    assert array.element_wall_s == pytest.approx(0.01)
    # measured: the next chunks of a new array of the same kind would take 0.5 / 0.01
    assert chunk_size(array.element_wall_s, target_s=0.5, most=256) == 50


async def test_a_stale_attempt_is_fenced(db: Sessions) -> None:
    array_id = await _array(db, 2)
    await _chunks(db)
    [chunk_id] = await _chunk_ids(db, array_id)
    old = await _claim(db, chunk_id)
    assert old is not None
    async with db() as session, session.begin():  # as the reaper re-queues a lost chunk
        await session.execute(
            update(ArrayChunk)
            .where(ArrayChunk.id == chunk_id)
            .values(worker=None, lease_expires_at=None)
        )
        await session.execute(
            text(
                "UPDATE job_arrays SET n_running = n_running - 2, n_queued = n_queued + 2"
                " WHERE job_id = :id"
            ),
            {"id": array_id},
        )
    new = await _claim(db, chunk_id, worker="w1")
    assert new is not None
    assert new.attempt == 2
    fenced = await _record(db, old, [_done(0)], last=True)
    assert fenced.fenced
    assert fenced.recorded == 0
    assert await _chunk_ids(db, array_id) == [chunk_id]
    counts = await _exact(db, array_id)
    assert (counts["RUNNING"], counts["SUCCEEDED"]) == (2, 0)
    assert (await _record(db, new, [_done(0), _done(1)], last=True)).recorded == 2
    async with db() as session:
        row = await session.get_one(Job, element_id(array_id, 0))
        usage = (
            await session.execute(
                select(AttemptRecord.attempt, AttemptRecord.outcome)
                .where(AttemptRecord.job_id == row.id)
                .order_by(AttemptRecord.attempt)
            )
        ).all()
    assert row.attempts == 2
    # the attempt lost with its worker is counted once, as lost, beside the one that ran
    assert [tuple(u) for u in usage] == [(1, "LOST"), (2, "SUCCEEDED")]
    await _exact(db, array_id)


async def test_a_retryable_failure_becomes_a_queued_row(db: Sessions) -> None:
    array_id = await _array(db, 2, max_retries=1)
    await _chunks(db)
    [chunk_id] = await _chunk_ids(db, array_id)
    claim = await _claim(db, chunk_id)
    assert claim is not None
    outcomes = [_done(0, S.FAILED, retryable=True), _done(1, S.FAILED, retryable=False)]
    assert (await _record(db, claim, outcomes, last=True)).recorded == 2
    async with db() as session:
        retry = await session.get_one(Job, element_id(array_id, 0))
        failed = await session.get_one(Job, element_id(array_id, 1))
        usage = await session.scalar(
            select(func.count()).where(AttemptRecord.job_id == retry.id, AttemptRecord.attempt == 1)
        )
    assert (retry.state, retry.attempts, retry.worker, retry.error) == ("QUEUED", 1, None, "boom")
    assert retry.run_after is not None
    assert retry.run_after > utcnow()
    assert retry.dispatched_at is None
    assert retry.finished_at is None
    assert usage == 1  # the failed attempt counted
    assert (failed.state, failed.error) == ("FAILED", "boom")
    counts = await _exact(db, array_id)
    assert (counts["QUEUED"], counts["FAILED"], counts["RUNNING"]) == (1, 1, 0)


async def test_a_cancelled_array_says_so_to_the_flush(db: Sessions) -> None:
    array_id = await _array(db, 2)
    await _chunks(db)
    [chunk_id] = await _chunk_ids(db, array_id)
    claim = await _claim(db, chunk_id)
    assert claim is not None
    async with db() as session, session.begin():
        await session.execute(
            update(JobArray).where(JobArray.job_id == array_id).values(cancelled=True)
        )
    flushed = await _record(db, claim, [_done(0)])
    assert flushed.cancelled
    assert not flushed.fenced
    rest = await _record(db, claim, [_done(1, S.CANCELLED)], last=True)
    assert rest.recorded == 1
    counts = await _exact(db, array_id)
    assert (counts["SUCCEEDED"], counts["CANCELLED"]) == (1, 1)


async def test_leases_are_extended_only_for_the_holder(db: Sessions) -> None:
    array_id = await _array(db, 1)
    await _chunks(db)
    [chunk_id] = await _chunk_ids(db, array_id)
    assert await _claim(db, chunk_id) is not None
    async with db() as session, session.begin():
        fetch = session_fetch(session)
        await extend_leases(fetch, [chunk_id], worker="other", lease_s=3600)
        held = await session.get_one(ArrayChunk, chunk_id)
        assert held.lease_expires_at is not None
        assert held.lease_expires_at < utcnow() + timedelta(seconds=LEASE_S + 5)
        await extend_leases(fetch, [chunk_id], worker="w1", lease_s=3600)
        held = await session.get_one(ArrayChunk, chunk_id, populate_existing=True)
        assert held.lease_expires_at is not None
        assert held.lease_expires_at > utcnow() + timedelta(seconds=3000)


async def test_measured_arrays_are_cut_into_chunks_within_the_window(db: Sessions) -> None:
    array_id = await _array(db, 100, max_concurrent=30)
    async with db() as session, session.begin():
        await session.execute(
            update(JobArray).where(JobArray.job_id == array_id).values(element_wall_s=0.05)
        )
    assert await _chunks(db) == 3  # 0.5 s / 0.05 s = 10 a chunk, 30 at most live
    async with db() as session:
        sizes = list(
            await session.scalars(
                select(ArrayChunk.n)
                .where(ArrayChunk.array_id == array_id)
                .order_by(ArrayChunk.first_index)
            )
        )
    assert sizes == [10, 10, 10]
    assert await _chunks(db) == 0  # full
    assert (await _exact(db, array_id))["QUEUED"] == 30


async def test_contending_tenants_chunks_are_cut_by_their_share_of_the_weights(
    db: Sessions,
) -> None:
    """Two tenants (weights 1 and 3) contend: each chunk is cut for the target times its
    tenant's share of the weights, so the lighter one's give their slot back sooner."""
    ids = [await _array(db, 100) for _ in range(2)]
    async with db() as session, session.begin():
        for array_id, weight in zip(ids, (1, 3), strict=True):
            await session.execute(
                update(JobArray).where(JobArray.job_id == array_id).values(element_wall_s=0.01)
            )
            parent = await session.get_one(Job, array_id)
            await session.execute(
                update(Tenant).where(Tenant.id == parent.tenant_id).values(weight=weight)
            )
    await _chunks(db)
    firsts = []
    async with db() as session:
        for array_id in ids:
            sizes = list(
                await session.scalars(
                    select(ArrayChunk.n)
                    .where(ArrayChunk.array_id == array_id)
                    .order_by(ArrayChunk.first_index)
                )
            )
            assert sum(sizes) == 100
            firsts.append(sizes[0])
    # 0.5 s * 1/4 / 0.01 s and 0.5 s * 3/4 / 0.01 s; a tenant alone: 0.5 s / 0.01 s (above)
    assert firsts == [12, 37]
