"""Array chunks on the worker (``services.worker.chunks``), on a database of its own and real
pool processes: a chunk runs each element once and records it; a cancel of the array stops a
running chunk within seconds and records the rest CANCELLED; an element over its timeout is
TIMED_OUT alone; a crash is a retryable failure; a chunk that is no longer this worker's
stops; a worker shutting down hands the rest back, and one killed with SIGKILL leaves what
it recorded recorded while the next claim runs only the rest (each element recorded once).

Chunks come from the scheduler's own statement (``materialise_chunks``), sized by setting
the array's measured wall time per element beforehand."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.worker.app import WorkerRuntime
from services.worker.chunks import CANCELLED_ERROR, Chunks, dispatched_work
from services.worker.runner import KernelRunner, Request
from services.worker.settings import WorkerSettings
from shared.db.engine import make_engine
from shared.db.models import Job, JobArray, Tenant
from shared.db.raw import raw_connection
from shared.events import ChunkDispatched, JobCancelled, JobDispatched
from shared.jobs.attempts import AttemptRecord
from shared.jobs.chunks import RETRY_REASON, ChunkClaim
from shared.jobs.materialise import materialise_chunks
from shared.messaging import Delivery, Reject
from shared.runtime import Resources
from shared.settings import CommonSettings, StorageSettings
from tests.factories import new_array, own_database
from tests.netfault import TcpProxy
from tests.processes import REPO

Sessions = async_sessionmaker[AsyncSession]
TARGET_S = 0.5
# an element that sleeps this long per run: a chunk of a few dozen runs for seconds
NAP = {"seconds": 0.1, "busy": False}


@pytest.fixture(scope="module")
async def database(settings: CommonSettings) -> AsyncIterator[tuple[str, Sessions]]:
    async with own_database(settings, "chunks") as (name, sessions):
        yield name, sessions


@pytest.fixture
def db(database: tuple[str, Sessions]) -> Sessions:
    return database[1]


def engine_of(db: Sessions) -> AsyncEngine:
    engine: AsyncEngine = db.kw["bind"]
    return engine


def chunks_of(db: Sessions, runner: KernelRunner, worker: str = "w1") -> Chunks:
    return Chunks(engine_of(db), runner, worker=worker, lease_s=30)


async def chunked_array(
    db: Sessions,
    size: int,
    *,
    kernel: str = "montecarlo_pi",
    params: dict[str, Any] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    index_param: str | None = "seed",
    timeout_s: int = 60,
) -> tuple[uuid.UUID, uuid.UUID]:
    """An array of ``size`` elements cut into one chunk: (array id, chunk id)."""
    tid = uuid.uuid4()
    job, array = new_array(
        tid,
        size,
        index_param=index_param,
        overrides=overrides,
        kernel=kernel,
        params=params if params is not None else {"samples": 1000},
        timeout_s=timeout_s,
        state="QUEUED",
    )
    array.element_wall_s = TARGET_S / (size + 0.5)  # one chunk of ``size`` elements
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"c{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
        await session.flush()
        session.add(job)
        await session.flush()
        session.add(array)
        await session.flush()
        # no overrides: SQL NULL, as the gateway stores it (the ORM would store JSON null)
        await session.execute(
            text("UPDATE job_arrays SET overrides = NULL WHERE job_id = :a AND :none"),
            {"a": job.id, "none": overrides is None},
        )
    async with raw_connection(engine_of(db)) as conn:
        # This helper wants one chunk, so the array must look alone: a measured array's room
        # is cut into at least one chunk per live worker slot (other tests' workers heartbeat
        # here), and a chunk's target shrinks while other tenants hold chunks (earlier tests'
        # leftovers, which nothing runs any more).
        await conn.execute("UPDATE workers SET heartbeat_at = now() - interval '1 hour'")
        await conn.execute("DELETE FROM array_chunks")
        await materialise_chunks(
            conn.fetch, window=10_000, limit=10_000, target_s=TARGET_S, chunk_max=10_000
        )
        rows = await conn.fetch("SELECT id, n FROM array_chunks WHERE array_id = $1", job.id)
    assert [r["n"] for r in rows] == [size]
    return job.id, rows[0]["id"]


async def elements(db: Sessions, array_id: uuid.UUID) -> dict[int, Job]:
    async with db() as session:
        rows = await session.scalars(select(Job).where(Job.array_id == array_id))
        return {row.array_index: row for row in rows if row.array_index is not None}


async def usage_rows(db: Sessions, array_id: uuid.UUID) -> list[AttemptRecord]:
    async with db() as session:
        rows = await session.scalars(
            select(AttemptRecord)
            .join(Job, Job.id == AttemptRecord.job_id)
            .where(Job.array_id == array_id)
        )
        return list(rows)


async def counts(db: Sessions, array_id: uuid.UUID) -> JobArray:
    async with db() as session:
        array = await session.get(JobArray, array_id)
        assert array is not None
        return array


async def chunk_row(db: Sessions, chunk_id: uuid.UUID) -> dict[str, Any] | None:
    async with db() as session:
        row = (
            await session.execute(
                text("SELECT worker, attempt, lease_expires_at FROM array_chunks WHERE id = :c"),
                {"c": chunk_id},
            )
        ).first()
        return None if row is None else dict(row._mapping)


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    end = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


async def some_recorded(db: Sessions, array_id: uuid.UUID, n: int = 1) -> None:
    async def check() -> bool:
        return len(await elements(db, array_id)) >= n

    await until(check)


async def claimed(chunks: Chunks, chunk_id: uuid.UUID) -> ChunkClaim:
    claim = await chunks.claim(chunk_id)
    assert claim is not None
    return claim


async def test_a_chunk_runs_every_element_once_and_records_it(
    db: Sessions, runner: KernelRunner
) -> None:
    array_id, chunk_id = await chunked_array(db, 20)
    chunks = chunks_of(db, runner)
    claim = await claimed(chunks, chunk_id)
    assert [e.index for e in claim.elements] == list(range(20))
    assert (await counts(db, array_id)).n_running == 20
    assert await chunks.claim(chunk_id) is None  # taken
    await chunks.run(claim)

    rows = await elements(db, array_id)
    assert sorted(rows) == list(range(20))
    alone = await runner.run(Request("montecarlo_pi", "cpu", {"samples": 1000, "seed": 7}))
    assert rows[7].result == alone.result  # element 7 ran with seed 7
    for row in rows.values():
        assert row.state == "SUCCEEDED", row.error
        assert row.attempts == 1
        assert row.worker == "w1"
        assert row.started_at is not None
        assert row.finished_at is not None
        assert row.started_at <= row.finished_at
    usage = await usage_rows(db, array_id)
    assert sorted(u.job_id for u in usage) == sorted(r.id for r in rows.values())
    assert all(u.outcome == "SUCCEEDED" for u in usage)
    array = await counts(db, array_id)
    assert (array.n_succeeded, array.n_running, array.n_queued, array.n_pending) == (20, 0, 0, 0)
    assert array.element_wall_s is not None
    assert await chunk_row(db, chunk_id) is None  # the last flush removed the chunk


async def test_a_cancel_stops_a_running_chunk_and_the_rest_end_cancelled(
    db: Sessions, runner: KernelRunner
) -> None:
    size = 60  # 6 s of naps: far longer than the cancel may take
    array_id, chunk_id = await chunked_array(db, size, kernel="spin", params=NAP, index_param=None)
    chunks = chunks_of(db, runner)
    task = asyncio.create_task(chunks.run(await claimed(chunks, chunk_id)))
    await some_recorded(db, array_id)
    async with db() as session, session.begin():
        await session.execute(
            text("UPDATE job_arrays SET cancelled = true WHERE job_id = :a"), {"a": array_id}
        )
    t0 = time.monotonic()
    await asyncio.wait_for(task, timeout=30)
    assert time.monotonic() - t0 < 5.0

    rows = await elements(db, array_id)
    assert sorted(rows) == list(range(size))  # each element has its one row
    states = [rows[i].state for i in range(size)]
    k = states.count("SUCCEEDED")
    assert states == ["SUCCEEDED"] * k + ["CANCELLED"] * (size - k)  # in order, then stopped
    assert size - k >= 10
    assert rows[size - 1].error == CANCELLED_ERROR
    array = await counts(db, array_id)
    assert (array.n_succeeded, array.n_cancelled, array.n_running) == (k, size - k, 0)
    assert await chunk_row(db, chunk_id) is None


async def test_an_element_over_its_timeout_times_out_alone(
    db: Sessions, runner: KernelRunner
) -> None:
    overrides: list[dict[str, Any]] = [{}, {"seconds": 600, "busy": False}, {}, {}]
    array_id, chunk_id = await chunked_array(
        db,
        4,
        kernel="spin",
        params={"seconds": 0.01},
        overrides=overrides,
        index_param=None,
        timeout_s=1,
    )
    chunks = chunks_of(db, runner)
    await asyncio.wait_for(chunks.run(await claimed(chunks, chunk_id)), timeout=60)
    rows = await elements(db, array_id)
    assert [rows[i].state for i in range(4)] == ["SUCCEEDED", "TIMED_OUT", "SUCCEEDED", "SUCCEEDED"]
    assert rows[1].error is not None
    assert "timeout_s=1" in rows[1].error
    assert (await counts(db, array_id)).n_timed_out == 1
    await runner.wait_idle()


async def test_a_crash_is_a_retryable_failure_queued_for_the_next_attempt(
    db: Sessions, runner: KernelRunner
) -> None:
    array_id, chunk_id = await chunked_array(db, 2, kernel="segfault", params={}, index_param=None)
    chunks = chunks_of(db, runner)
    await asyncio.wait_for(chunks.run(await claimed(chunks, chunk_id)), timeout=60)
    rows = await elements(db, array_id)
    for row in rows.values():  # retries left: back to QUEUED for the per-job path
        assert row.state == "QUEUED"
        assert row.state_reason == RETRY_REASON
        assert row.attempts == 1
    usage = await usage_rows(db, array_id)
    assert sorted(u.outcome for u in usage) == ["FAILED", "FAILED"]
    assert (await counts(db, array_id)).n_queued == 2
    await runner.wait_idle()


async def test_a_chunk_no_longer_ours_stops_and_the_heartbeat_extends_held_leases(
    db: Sessions, runner: KernelRunner
) -> None:
    array_id, chunk_id = await chunked_array(db, 60, kernel="spin", params=NAP, index_param=None)
    chunks = chunks_of(db, runner)
    task = asyncio.create_task(chunks.run(await claimed(chunks, chunk_id)))
    await some_recorded(db, array_id)
    before = await chunk_row(db, chunk_id)
    assert before is not None
    await chunks.extend()
    after = await chunk_row(db, chunk_id)
    assert after is not None
    assert after["lease_expires_at"] > before["lease_expires_at"]

    async with db() as session, session.begin():  # what a reaper's re-queue and claim do
        await session.execute(
            text("UPDATE array_chunks SET worker = 'w-other' WHERE id = :c"), {"c": chunk_id}
        )
    await asyncio.wait_for(task, timeout=5)
    recorded = len(await elements(db, array_id))
    assert recorded < 60
    await asyncio.sleep(0.5)
    assert len(await elements(db, array_id)) == recorded  # nothing more from this worker
    row = await chunk_row(db, chunk_id)
    assert row is not None
    assert row["worker"] == "w-other"


async def test_shutdown_hands_the_rest_back_and_the_next_claim_runs_only_those(
    db: Sessions, runner: KernelRunner
) -> None:
    size = 40
    array_id, chunk_id = await chunked_array(db, size, kernel="spin", params=NAP, index_param=None)
    first = chunks_of(db, runner, "w1")
    task = asyncio.create_task(first.run(await claimed(first, chunk_id)))
    await some_recorded(db, array_id)
    first.hand_back_all()
    await asyncio.wait_for(task, timeout=5)

    done = await elements(db, array_id)
    assert 0 < len(done) < size
    row = await chunk_row(db, chunk_id)
    assert row == {"worker": None, "attempt": 0, "lease_expires_at": None}
    array = await counts(db, array_id)
    assert (array.n_queued, array.n_running) == (size - len(done), 0)

    second = chunks_of(db, runner, "w2")
    claim = await claimed(second, chunk_id)
    assert claim.attempt == 1  # the handed back claim used no attempt
    assert [e.index for e in claim.elements] == sorted(set(range(size)) - set(done))
    await asyncio.wait_for(second.run(claim), timeout=60)
    rows = await elements(db, array_id)
    assert sorted(rows) == list(range(size))
    assert {i: r.worker for i, r in rows.items() if i in done} == dict.fromkeys(done, "w1")
    assert all(r.state == "SUCCEEDED" and r.attempts == 1 for r in rows.values())
    assert len(await usage_rows(db, array_id)) == size
    assert (await counts(db, array_id)).n_succeeded == size


async def test_a_worker_killed_mid_chunk_keeps_its_records_and_the_rest_run_once(
    database: tuple[str, Sessions], runner: KernelRunner, plugin_path: str, tmp_path: Path
) -> None:
    name, db = database
    size = 40
    array_id, chunk_id = await chunked_array(db, size, kernel="spin", params=NAP, index_param=None)
    env = {**os.environ, "PYTHONPATH": plugin_path}
    log = tmp_path / "chunk_process.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.worker.chunk_process", name, str(chunk_id), "w-k", "30"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        await some_recorded(db, array_id, 5)
        proc.kill()  # SIGKILL: no flush, no hand back; its pool process dies with it
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    await asyncio.sleep(0.5)
    done = await elements(db, array_id)
    assert 5 <= len(done) < size, log.read_text()
    assert all(r.worker == "w-k" for r in done.values())

    # the reaper: the lease ran out, the chunk goes back to QUEUED for its next attempt
    async with db() as session, session.begin():
        await session.execute(
            text("UPDATE array_chunks SET lease_expires_at = now() - interval '1 s' WHERE id = :c"),
            {"c": chunk_id},
        )
    await requeue_expired(db)
    second = chunks_of(db, runner, "w2")
    claim = await claimed(second, chunk_id)
    assert claim.attempt == 2
    assert [e.index for e in claim.elements] == sorted(set(range(size)) - set(done))
    await asyncio.wait_for(second.run(claim), timeout=60)

    rows = await elements(db, array_id)
    assert sorted(rows) == list(range(size))
    for i, row in rows.items():  # recorded once, by the attempt that ran it
        assert (row.worker, row.attempts) == (("w-k", 1) if i in done else ("w2", 2))
    usage = await usage_rows(db, array_id)
    # one usage row per attempt: the elements recorded by the second attempt also count the
    # first, lost with its worker, once (LOST); nothing recorded twice
    assert sorted((u.attempt, u.outcome) for u in usage) == sorted(
        [(1, "SUCCEEDED")] * len(done) + [(1, "LOST"), (2, "SUCCEEDED")] * (size - len(done))
    )
    array = await counts(db, array_id)
    assert (array.n_succeeded, array.n_running, array.n_queued) == (size, 0, 0)
    assert await chunk_row(db, chunk_id) is None


async def requeue_expired(db: Sessions) -> None:
    """What the scheduler's reaper does to a chunk whose lease ran out."""
    from shared.jobs import chunks as shared_chunks

    requeue = getattr(shared_chunks, "requeue_expired", None)
    assert requeue is not None, "shared.jobs.chunks.requeue_expired"
    async with raw_connection(engine_of(db)) as conn:
        await requeue(conn.fetch)


def delivery(body: bytes) -> Delivery:
    return Delivery(
        body=body, message_id=None, routing_key=None, redelivered=False, delivery_count=1
    )


def test_a_work_queue_carries_jobs_and_chunks_told_apart_by_type() -> None:
    tid, cid, jid = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    chunk = ChunkDispatched(tenant_id=tid, chunk_id=cid, device="cpu", kernel="montecarlo_pi")
    got = dispatched_work(delivery(chunk.to_bytes()))
    assert isinstance(got, ChunkDispatched)
    assert got.chunk_id == cid
    job = JobDispatched(tenant_id=tid, job_id=jid, device="cpu", kernel="montecarlo_pi")
    got = dispatched_work(delivery(job.to_bytes()))
    assert isinstance(got, JobDispatched)
    assert got.job_id == jid
    with pytest.raises(Reject):
        dispatched_work(delivery(b'{"type": "no.such.event"}'))


def runtime(db: Sessions, tmp_path: Path, runner: KernelRunner) -> WorkerRuntime:
    """A worker's runtime on this database and the session's pool, without a broker."""
    storage = StorageSettings.model_validate({"local": {"root": str(tmp_path / "local")}})
    settings = WorkerSettings(
        name=f"w-{uuid.uuid4().hex[:8]}", storage=storage, concurrency=2, lease_s=30
    )

    async def stop_consuming() -> None:
        return None

    res = SimpleNamespace(
        engine=engine_of(db),
        sessions=db,
        relay=SimpleNamespace(wake=lambda: None),
        broker=SimpleNamespace(stop_consuming=stop_consuming),
    )
    return WorkerRuntime(cast(Resources, res), settings, runner)


def chunk_dispatched(chunk_id: uuid.UUID) -> Delivery:
    event = ChunkDispatched(tenant_id=uuid.uuid4(), chunk_id=chunk_id, device="cpu", kernel="x")
    return Delivery(event.to_bytes(), None, "job.dispatch.cpu", False, 0)


async def test_a_worker_runs_a_dispatched_chunk_in_one_slot(
    db: Sessions, runner: KernelRunner, tmp_path: Path
) -> None:
    array_id, chunk_id = await chunked_array(db, 30)
    rt = runtime(db, tmp_path, runner)
    await rt.on_dispatch(chunk_dispatched(chunk_id))  # returns once claimed: then acked
    row = await chunk_row(db, chunk_id)
    assert row is not None
    assert row["worker"] == rt.settings.name
    await asyncio.wait_for(asyncio.gather(*rt.jobs), timeout=60)
    rows = await elements(db, array_id)
    assert sorted(rows) == list(range(30))
    assert all(r.state == "SUCCEEDED" for r in rows.values())
    assert not rt.slots.locked()
    assert rt.slots._value == 2  # the slot was given back
    await rt.on_dispatch(chunk_dispatched(chunk_id))  # a duplicate: gone, nothing runs
    assert not rt.jobs
    assert rt.slots._value == 2


async def test_a_worker_shutting_down_hands_its_running_chunk_back(
    db: Sessions, runner: KernelRunner, tmp_path: Path
) -> None:
    size = 60
    array_id, chunk_id = await chunked_array(db, size, kernel="spin", params=NAP, index_param=None)
    rt = runtime(db, tmp_path, runner)
    await rt.on_dispatch(chunk_dispatched(chunk_id))
    await some_recorded(db, array_id)
    t0 = time.monotonic()
    await asyncio.wait_for(rt.shutdown(), timeout=30)
    assert time.monotonic() - t0 < rt.settings.shutdown_grace_s  # stopped, not waited out
    done = await elements(db, array_id)
    assert 0 < len(done) < size
    assert await chunk_row(db, chunk_id) == {"worker": None, "attempt": 0, "lease_expires_at": None}
    assert (await counts(db, array_id)).n_queued == size - len(done)


@pytest.fixture
async def proxied(
    database: tuple[str, Sessions], settings: CommonSettings
) -> AsyncIterator[tuple[TcpProxy, AsyncEngine]]:
    """An engine on this module's database through a TCP proxy the test stops and restarts."""
    proxy = TcpProxy(settings.postgres.port)
    await proxy.start()
    pg = settings.postgres.model_copy(
        update={"database": database[0], "port": proxy.port, "connect_timeout_s": 1.0}
    )
    engine = make_engine(pg)
    yield proxy, engine
    await engine.dispose()
    with contextlib.suppress(Exception):
        await proxy.stop()


async def test_flushes_while_the_database_is_away_are_retried_and_record_each_element_once(
    db: Sessions, runner: KernelRunner, proxied: tuple[TcpProxy, AsyncEngine]
) -> None:
    proxy, engine = proxied
    size = 30
    array_id, chunk_id = await chunked_array(db, size, kernel="spin", params=NAP, index_param=None)
    chunks = Chunks(engine, runner, worker="w1", lease_s=30)
    task = asyncio.create_task(chunks.run(await claimed(chunks, chunk_id)))
    await some_recorded(db, array_id)
    await proxy.stop()  # the database goes away while the elements go on
    during = len(await elements(db, array_id))
    await asyncio.sleep(1.0)
    assert len(await elements(db, array_id)) == during  # nothing got through meanwhile
    assert not task.done()
    await proxy.start()  # back, on the same port
    await asyncio.wait_for(task, timeout=60)
    rows = await elements(db, array_id)
    assert sorted(rows) == list(range(size))
    assert all(r.state == "SUCCEEDED" and r.worker == "w1" for r in rows.values())
    assert len(await usage_rows(db, array_id)) == size
    assert (await counts(db, array_id)).n_succeeded == size
    assert await chunk_row(db, chunk_id) is None


async def test_the_array_cancel_message_stops_its_running_chunk_at_once(
    db: Sessions, runner: KernelRunner, tmp_path: Path
) -> None:
    size = 60
    array_id, chunk_id = await chunked_array(db, size, kernel="spin", params=NAP, index_param=None)
    rt = runtime(db, tmp_path, runner)
    rt.chunks.poll_s = rt.chunks.flush_s = 60.0  # no flush in the test's time: only the message
    await rt.on_dispatch(chunk_dispatched(chunk_id))
    await chunk_running(rt)
    async with db() as session, session.begin():  # the gateway's cancel, then its message
        await session.execute(
            text("UPDATE job_arrays SET cancelled = true WHERE job_id = :a"), {"a": array_id}
        )
    message = JobCancelled(tenant_id=uuid.uuid4(), job_id=array_id, worker=rt.settings.name)
    t0 = time.monotonic()
    await rt.on_control(Delivery(message.to_bytes(), None, "job.cancelled", False, 0))
    await asyncio.wait_for(asyncio.gather(*rt.jobs), timeout=30)
    assert time.monotonic() - t0 < 5.0
    rows = await elements(db, array_id)
    assert sorted(rows) == list(range(size))
    assert [r.state for r in rows.values()].count("CANCELLED") >= size - 10
    assert await chunk_row(db, chunk_id) is None


async def chunk_running(rt: WorkerRuntime) -> None:
    """Until the runtime runs a chunk."""
    while not rt.chunks.running:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # a few elements in


async def test_a_shutdown_past_its_grace_kills_the_element_and_hands_the_rest_back(
    db: Sessions, runner: KernelRunner, tmp_path: Path
) -> None:
    """An element that outlasts the shutdown's grace: its process is killed, what ended is
    recorded, and it goes back with the elements after it."""
    overrides: list[dict[str, Any]] = [{}, {}, {}, {"seconds": 600, "busy": False}, {}, {}]
    array_id, chunk_id = await chunked_array(
        db, 6, kernel="spin", params={"seconds": 0.01}, overrides=overrides, index_param=None
    )
    rt = runtime(db, tmp_path, runner)
    rt.settings = rt.settings.model_copy(update={"shutdown_grace_s": 1.0})
    await rt.on_dispatch(chunk_dispatched(chunk_id))
    await some_recorded(db, array_id, 3)
    await asyncio.wait_for(rt.shutdown(), timeout=30)
    assert sorted(await elements(db, array_id)) == [0, 1, 2]
    assert await chunk_row(db, chunk_id) == {"worker": None, "attempt": 0, "lease_expires_at": None}
    array = await counts(db, array_id)
    assert (array.n_succeeded, array.n_queued, array.n_running) == (3, 3, 0)
    await runner.wait_idle()
    assert runner.size == 2  # the killed process was replaced
