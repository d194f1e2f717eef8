"""The release of dependents (migration 0022, ``shared.jobs.deps``): set-based, in the
transaction that makes the dependency final. A fan-out of 1,000 dependents and a fan-in of
1,000 dependencies are each settled by the one statement that ends the dependency (or all
of them); a transaction killed after that statement and before its commit releases nothing,
and the next one releases each edge exactly once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler.demand import jobs_per_tenant
from shared.db.models import Job, Tenant
from shared.jobs import deps
from shared.jobs.proposals import Report, Reported
from shared.jobs.states import JobState
from shared.jobs.store import set_job_state
from shared.settings import CommonSettings
from tests.factories import new_array

Sessions = async_sessionmaker[AsyncSession]
N = 1000


@asynccontextmanager
async def raw(s: Sessions) -> AsyncIterator[Any]:
    """A plain asyncpg connection in a transaction (a session's, committed at the end)."""
    async with s() as session, session.begin():
        conn = await session.connection()
        driver = (await conn.get_raw_connection()).driver_connection
        yield driver


async def tenant(s: Sessions) -> uuid.UUID:
    tid = uuid.uuid4()
    async with s() as session, session.begin():
        session.add(Tenant(id=tid, name=f"t-{tid.hex[:8]}"))
    return tid


async def jobs(s: Sessions, tid: uuid.UUID, n: int, state: str) -> list[uuid.UUID]:
    """``n`` jobs in ``state`` (RUNNING ones on attempt 1 of worker w1)."""
    ids = [uuid.uuid4() for _ in range(n)]
    running = state == "RUNNING"
    rows: list[dict[str, Any]] = [
        {
            "id": i,
            "tenant_id": tid,
            "kernel": "montecarlo_pi",
            "device": "cpu",
            "params": {},
            "inputs": {},
            "outputs": {},
            "labels": {},
            "timeout_s": 60,
            "max_retries": 0,
            "state": state,
            "state_reason": deps.WAITING if state == "PENDING" else None,
            "attempts": 1 if running else 0,
            "worker": "w1" if running else None,
        }
        for i in ids
    ]
    async with s() as session, session.begin():
        await session.execute(insert(Job), rows)
    return ids


async def link(s: Sessions, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]], condition: str) -> None:
    """Edges (dependent, dependency) as a submission attaches them (dependencies RUNNING)."""
    edges = [deps.Edge(j, deps.Target(d, "RUNNING"), condition) for j, d in pairs]
    async with raw(s) as conn:
        await conn.execute("SELECT 1")  # the session's transaction has begun
        await deps.attach(conn, edges)


async def state_of(s: Sessions, ids: Sequence[uuid.UUID]) -> dict[tuple[str, int, str | None], int]:
    """How many of ``ids`` are in each (state, deps_left, state_reason)."""
    async with s() as session:
        rows = await session.execute(
            text(
                "SELECT state, deps_left, state_reason, count(*) FROM jobs"
                " WHERE id = ANY(:ids) GROUP BY 1, 2, 3"
            ),
            {"ids": list(ids)},
        )
        return {(r[0], r[1], r[2]): r[3] for r in rows}


async def edges_of(conn: Any, ids: Sequence[uuid.UUID]) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM job_deps WHERE job_id = ANY($1)", ids))


async def test_a_fan_out_of_1000_is_released_by_the_statement_that_ends_the_dependency(
    s: Sessions,
) -> None:
    tid = await tenant(s)
    (a,) = await jobs(s, tid, 1, "RUNNING")
    waiting = await jobs(s, tid, N, "PENDING")
    await link(s, [(w, a) for w in waiting], "afterok")
    assert await state_of(s, waiting) == {("PENDING", 1, deps.WAITING): N}
    async with s() as session, session.begin():
        proposal = Reported(1, "w1", Report(JobState.SUCCEEDED, retryable=False))
        assert (await set_job_state(session, a, proposal)).accepted
        # before the commit, inside the transaction of the record: all released already
        left = await session.scalar(
            text("SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND deps_left > 0"),
            {"ids": waiting},
        )
        assert left == 0
    assert await state_of(s, waiting) == {("PENDING", 0, None): N}


async def test_a_fan_in_of_1000_settles_in_one_statement_and_a_failure_cancels_once(
    s: Sessions,
) -> None:
    tid = await tenant(s)
    ends = await jobs(s, tid, N, "RUNNING")
    ok, never = await jobs(s, tid, 2, "PENDING")
    await link(s, [(ok, e) for e in ends], "afterany")
    await link(s, [(never, e) for e in ends], "afterok")
    assert await state_of(s, [ok, never]) == {("PENDING", N, deps.WAITING): 2}
    async with raw(s) as conn:
        # one statement ends them all (as the worker's group commit does): one release
        await conn.execute(
            "UPDATE jobs SET state = CASE WHEN id = $2 THEN 'FAILED' ELSE 'SUCCEEDED' END,"
            " finished_at = now() WHERE id = ANY($1)",
            ends[:-1],
            ends[0],
        )
        assert await edges_of(conn, [ok, never]) == 2  # the last dependency still runs
    assert await state_of(s, [ok]) == {("PENDING", 1, deps.WAITING): 1}
    assert await state_of(s, [never]) == {("CANCELLED", 1, deps.NEVER): 1}
    async with raw(s) as conn:
        await conn.execute("UPDATE jobs SET state = 'SUCCEEDED' WHERE id = $1", ends[-1])
        assert await edges_of(conn, [ok, never]) == 0
        history = await conn.fetchval(
            "SELECT count(*) FROM job_events WHERE job_id = $1 AND to_state = 'CANCELLED'", never
        )
    assert history == 1  # cancelled once, whatever came after
    assert await state_of(s, [ok]) == {("PENDING", 0, None): 1}
    assert await state_of(s, [never]) == {("CANCELLED", 0, deps.NEVER): 1}


async def test_a_transaction_killed_while_releasing_releases_nothing_then_once(
    s: Sessions, settings: CommonSettings
) -> None:
    tid = await tenant(s)
    (a,) = await jobs(s, tid, 1, "RUNNING")
    waiting = await jobs(s, tid, 10, "PENDING")
    chained = await jobs(s, tid, 10, "PENDING")
    await link(s, [(w, a) for w in waiting], "afternotok")
    await link(s, list(zip(chained, waiting, strict=True)), "afterok")
    pg = settings.postgres
    async with s() as session:
        database = await session.scalar(text("SELECT current_database()"))
    victim = await asyncpg.connect(
        host=pg.host,
        port=pg.port,
        user=pg.user,
        password=pg.password.get_secret_value(),
        database=database,
    )
    try:
        pid = await victim.fetchval("SELECT pg_backend_pid()")
        tx = victim.transaction()
        await tx.start()
        await victim.execute("UPDATE jobs SET state = 'SUCCEEDED' WHERE id = $1", a)
        # the release ran in this transaction: it cancelled both generations, uncommitted
        assert (
            await victim.fetchval(
                "SELECT count(*) FROM jobs WHERE id = ANY($1) AND state = 'CANCELLED'",
                waiting + chained,
            )
            == 20
        )
        async with s() as session, session.begin():  # killed before its commit
            await session.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    finally:
        await victim.close()
    assert await state_of(s, [a]) == {("RUNNING", 0, None): 1}
    assert await state_of(s, waiting + chained) == {("PENDING", 1, deps.WAITING): 20}
    async with raw(s) as conn:
        assert await edges_of(conn, waiting + chained) == 20
        await conn.execute("UPDATE jobs SET state = 'SUCCEEDED' WHERE id = $1", a)
        # ending it again (a repeated record) settles nothing twice
        await conn.execute("UPDATE jobs SET state = 'SUCCEEDED' WHERE id = $1", a)
    assert await state_of(s, waiting + chained) == {("CANCELLED", 0, deps.NEVER): 20}
    async with raw(s) as conn:
        assert await edges_of(conn, waiting + chained) == 0


async def test_a_long_chain_is_cancelled_generation_by_generation_without_recursion(
    s: Sessions,
) -> None:
    """Each generation's cancel is settled by the same call's loop, not by a nested trigger:
    a chain far deeper than PostgreSQL's stack allows recursing (a few hundred) still ends
    in the one statement that failed its head."""
    tid = await tenant(s)
    (head,) = await jobs(s, tid, 1, "RUNNING")
    chain = await jobs(s, tid, 600, "PENDING")
    await link(s, list(zip(chain, [head, *chain[:-1]], strict=True)), "afterok")
    async with raw(s) as conn:
        await conn.execute("UPDATE jobs SET state = 'FAILED' WHERE id = $1", head)
    assert await state_of(s, chain) == {("CANCELLED", 0, deps.NEVER): 600}


async def test_a_job_or_array_that_waits_is_held_not_demand(s: Sessions) -> None:
    """The autoscaler counts a waiting job as held (``runnable_now`` includes
    ``deps_left = 0``), and an array that waits asks for no worker for its elements."""
    tid = await tenant(s)
    (a,) = await jobs(s, tid, 1, "RUNNING")
    (b,) = await jobs(s, tid, 1, "PENDING")
    async with s() as session, session.begin():
        job, array = new_array(tid, 5, params={"samples": 10})
        session.add(job)
        await session.flush()
        session.add(array)
    await link(s, [(b, a), (job.id, a)], "afterok")
    async with s() as session:
        pools = (await jobs_per_tenant(session=session, any_pool="cpu"))[tid].pools
    waiting = sum(p.waiting for p in pools.values())
    runnable = sum(p.runnable for p in pools.values())
    assert (waiting, runnable) == (6, 0)
    async with raw(s) as conn:
        await conn.execute("UPDATE jobs SET state = 'SUCCEEDED' WHERE id = $1", a)
    async with s() as session:
        pools = (await jobs_per_tenant(session=session, any_pool="cpu"))[tid].pools
    assert sum(p.runnable for p in pools.values()) == 6
