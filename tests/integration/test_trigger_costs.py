"""The triggers on ``jobs`` cost nothing for the jobs they do not concern (migration 0025):
a job that nothing depends on ends without a call of the dependency resolver, and a job
without datasets gets its receipt without the catalogue's lookups, while a job with a
dependent (an edge on it, or an ``aftercorr`` edge on its array) is still resolved in the
statement that ends it. The calls are counted with ``pg_stat_get_xact_function_calls`` in the
transaction that ends the job (``track_functions`` on for it), before and after the statement
(the backend's counts not yet flushed to the statistics, older ones included)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import ArrayChunk, Job, JobDep, Tenant, Worker
from shared.events import utcnow
from shared.jobs.arrays import element_id
from shared.jobs.chunks import ElementOutcome, claim_chunk, record_elements
from shared.jobs.materialise import materialise_chunks
from shared.jobs.proposals import Report
from shared.jobs.states import JobState
from shared.jobs.store import Finish, claim_queued, finish_attempts, session_fetch
from shared.settings import CommonSettings
from tests.factories import new_array, new_job, own_database

Sessions = async_sessionmaker[AsyncSession]

CALLS = """
SELECT coalesce(pg_stat_get_xact_function_calls('stratus_deps_resolve'::regproc), 0),
       coalesce(pg_stat_get_xact_function_calls('stratus_receipt'::regproc), 0)
"""


@pytest.fixture(scope="module")
async def db(settings: CommonSettings) -> AsyncIterator[Sessions]:
    async with own_database(settings, "trigger_costs") as (_, sessions):
        yield sessions


async def _tenant(db: Sessions) -> uuid.UUID:
    tid = uuid.uuid4()
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"t{tid.hex[:8]}", weight=1, quotas={}))
    return tid


async def _running(db: Sessions, jid: uuid.UUID) -> int:
    """Job ``jid`` (added already, QUEUED) claimed: its attempt."""
    async with db() as session, session.begin():
        claims = await claim_queued(session_fetch(session), [jid], worker="w1", lease_s=30)
    return claims[jid].attempt


async def _finish(db: Sessions, tid: uuid.UUID, jid: uuid.UUID, attempt: int) -> tuple[int, int]:
    """Record job ``jid`` SUCCEEDED with the worker's set-based statement: the calls of the
    resolver and of the receipt's trigger that it made."""
    report = Report(JobState.SUCCEEDED, result={"pi": 3.1}, cpu_seconds=0.25, wall_seconds=0.3)
    async with db() as session, session.begin():
        await session.execute(text("SET LOCAL track_functions = 'pl'"))
        before = (await session.execute(text(CALLS))).one()
        left = await finish_attempts(
            session_fetch(session), [Finish(jid, tid, attempt, report)], worker="w1"
        )
        assert left == []
        after = (await session.execute(text(CALLS))).one()
    return int(after[0] - before[0]), int(after[1] - before[1])


async def test_a_job_nothing_depends_on_ends_without_the_resolver(db: Sessions) -> None:
    tid, jid = await _tenant(db), uuid.uuid4()
    async with db() as session, session.begin():
        session.add(new_job(tid, id=jid, state="QUEUED"))
    async with db() as session, session.begin():
        session.add(Worker(id="w1", device="cpu", concurrency=2, software={"stratus": "1.0"}))
    attempt = await _running(db, jid)
    # the worker's record makes the receipt of a job without datasets itself
    assert await _finish(db, tid, jid, attempt) == (0, 0)
    async with db() as session:
        job = await session.get_one(Job, jid)
    assert job.state == "SUCCEEDED"
    assert job.receipt == {
        "kernel": "montecarlo_pi",
        "kernel_version": "1.0",
        "params": {"samples": 1},
        "device": None,
        "inputs": {},
        "outputs": {},
        "software": {},
        "worker": "w1",
        "cpu_seconds": 0.25,
    }


async def test_a_job_with_a_dependent_releases_it_when_it_ends(db: Sessions) -> None:
    tid, first, second = await _tenant(db), uuid.uuid4(), uuid.uuid4()
    async with db() as session, session.begin():
        session.add(new_job(tid, id=first, state="QUEUED"))
        session.add(new_job(tid, id=second, deps_left=1, state_reason="waiting"))
        await session.flush()
        session.add(JobDep(job_id=second, dep_id=first, condition="afterok"))
    attempt = await _running(db, first)
    resolved, _ = await _finish(db, tid, first, attempt)
    assert resolved == 1
    async with db() as session:
        dependent = await session.get_one(Job, second)
        edges = (
            await session.execute(text("SELECT count(*) FROM job_deps WHERE job_id = :j"),
                                  {"j": second})
        ).scalar_one()  # fmt: skip
    assert dependent.deps_left == 0
    assert edges == 0


async def test_an_element_with_an_aftercorr_dependent_makes_its_element(db: Sessions) -> None:
    """Element 1 of A ends: B's element 1 (``aftercorr``) gets its row, QUEUED."""
    tid = await _tenant(db)
    a_job, a_array = new_array(tid, 2)
    b_job, b_array = new_array(tid, 2, deps_left=1)
    async with db() as session, session.begin():
        session.add_all([a_job, b_job])
        await session.flush()
        session.add_all([a_array, b_array])
        await session.flush()
        session.add(JobDep(job_id=b_job.id, dep_id=a_job.id, condition="aftercorr"))
        a_array.next_index = 2
        for i in range(2):
            session.add(new_job(tid, id=element_id(a_job.id, i), array_id=a_job.id,
                                array_index=i, state="QUEUED"))  # fmt: skip
    one = element_id(a_job.id, 1)
    attempt = await _running(db, one)
    resolved, _ = await _finish(db, tid, one, attempt)
    assert resolved == 1
    async with db() as session:
        made = await session.get(Job, element_id(b_job.id, 1))
        other = await session.get(Job, element_id(b_job.id, 0))
    assert made is not None
    assert made.state == "QUEUED"
    assert other is None  # A's element 0 has not ended


async def test_a_chunk_flush_gives_its_elements_their_receipts_without_the_trigger(
    db: Sessions,
) -> None:
    """The flush's statement makes each SUCCEEDED element's receipt as the trigger makes one
    (the worker's software, the element's params, empty datasets, its CPU seconds): no call
    of ``stratus_receipt``."""
    tid = await _tenant(db)
    job, array = new_array(tid, 2, index_param="seed", params={"samples": 7})
    async with db() as session, session.begin():
        session.add(
            Worker(id="w9", device="cpu", concurrency=2, software={"stratus": "9.9", "numpy": "2"})
        )
        session.add(job)
        await session.flush()
        session.add(array)
    async with db() as session, session.begin():
        fetch = session_fetch(session)
        await materialise_chunks(fetch, window=256, limit=1000, target_s=0.5, chunk_max=256)
    async with db() as session:
        [chunk_id] = await session.scalars(
            select(ArrayChunk.id).where(ArrayChunk.array_id == job.id)
        )
    async with db() as session, session.begin():
        claim = await claim_chunk(session_fetch(session), chunk_id, worker="w9", lease_s=30)
    assert claim is not None
    now = utcnow()
    outcomes = [
        ElementOutcome(
            index=i,
            state=JobState.SUCCEEDED,
            result={"i": i},
            error=None,
            retryable=False,
            cpu_seconds=0.5 + i,
            wall_seconds=1.0,
            started_at=now,
            finished_at=now,
        )
        for i in range(2)
    ]
    async with db() as session, session.begin():
        await session.execute(text("SET LOCAL track_functions = 'pl'"))
        before = (await session.execute(text(CALLS))).one()
        await record_elements(session_fetch(session), claim, outcomes, worker="w9", last=True)
        after = (await session.execute(text(CALLS))).one()
    assert after[1] - before[1] == 0  # no receipt trigger call
    async with db() as session:
        rows = [await session.get_one(Job, element_id(job.id, i)) for i in range(2)]
    for i, row in enumerate(rows):
        assert row.state == "SUCCEEDED"
        assert row.receipt == {
            "kernel": "montecarlo_pi",
            "kernel_version": "9.9",
            "params": {"samples": 7, "seed": i},
            "device": "cpu",
            "inputs": {},
            "outputs": {},
            "software": {"numpy": "2"},
            "worker": "w9",
            "cpu_seconds": 0.5 + i,
        }
