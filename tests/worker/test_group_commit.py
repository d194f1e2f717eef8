"""The worker's claims and records in group commits on plain asyncpg
(``services.worker.batch``, ``shared.jobs.store.claim_queued`` / ``finish_attempts``), on a
database of its own: jobs that wait together go in one statement, each gets its own
``job_events`` row and usage row, and each statement one wake-up of the scheduler (NOTIFY);
a superseded attempt in a batch is
refused while the others commit; a row the database rejects fails its own caller only; and
records made while the database is away are retried until it is back, then durable."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.worker import batch, service
from services.worker.app import WorkerRuntime
from services.worker.batch import Claims, Records, Writes
from services.worker.datasets import attempt_files
from services.worker.runner import KernelRunner
from services.worker.settings import WorkerSettings
from shared.db.batch import GroupCommit
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.models import Job, JobAttempt, JobDep, JobEvent, Tenant
from shared.db.raw import raw_connection
from shared.db.wakeup import FINISHED
from shared.jobs.proposals import Cancelled, Claimed, Lost, Report
from shared.jobs.states import JobState
from shared.jobs.store import Claim, Finish, set_job_state
from shared.runtime import Resources
from shared.settings import CommonSettings, StorageSettings
from tests.factories import admit_jobs, new_job, own_database
from tests.netfault import TcpProxy
from tests.wakeups import Wakeups
from tests.worker.test_held_leases import InstantRunner, dispatched

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture(scope="module")
async def db(settings: CommonSettings) -> AsyncIterator[tuple[str, Sessions]]:
    async with own_database(settings, "groupcommit") as found:
        yield found


@pytest.fixture
def sessions(db: tuple[str, Sessions]) -> Sessions:
    return db[1]


def engine_of(sessions: Sessions) -> AsyncEngine:
    return cast(AsyncEngine, sessions.kw["bind"])


async def queued_jobs(sessions: Sessions, n: int) -> list[uuid.UUID]:
    tid, ids = uuid.uuid4(), [uuid.uuid4() for _ in range(n)]
    async with sessions() as session, session.begin():
        session.add(Tenant(id=tid, name=f"g{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
        await session.flush()
        session.add_all(new_job(tid, id=jid, params={"samples": i}) for i, jid in enumerate(ids))
    async with sessions() as session, session.begin():
        assert await admit_jobs(session=session, job_ids=ids) == n
    return ids


async def claimed(sessions: Sessions, n: int, worker: str = "w1") -> list[Claim]:
    claims = Claims(engine_of(sessions), sessions, worker=worker, lease_s=30)
    found = await asyncio.gather(*(claims.claim(j) for j in await queued_jobs(sessions, n)))
    assert all(c is not None for c in found)
    return [c for c in found if c is not None]


def succeeded(claim: Claim) -> Finish:
    result = {"n": claim.params["samples"]}
    return Finish(
        claim.job_id,
        claim.tenant_id,
        claim.attempt,
        Report(JobState.SUCCEEDED, result, cpu_seconds=0.5),
    )


async def events(sessions: Sessions, job_id: uuid.UUID) -> list[tuple[Any, ...]]:
    async with sessions() as session:
        rows = await session.execute(
            select(JobEvent.attempt, JobEvent.from_state, JobEvent.to_state, JobEvent.worker)
            .where(JobEvent.job_id == job_id)
            .order_by(JobEvent.id)
        )
        return [tuple(r) for r in rows]


async def usage(sessions: Sessions, job_id: uuid.UUID) -> list[tuple[Any, ...]]:
    async with sessions() as session:
        rows = await session.execute(
            select(JobAttempt.attempt, JobAttempt.outcome, JobAttempt.cpu_seconds).where(
                JobAttempt.job_id == job_id
            )
        )
        return [tuple(r) for r in rows]


@pytest.fixture
def dsn(db: tuple[str, Sessions], settings: CommonSettings) -> str:
    return settings.postgres.model_copy(update={"database": db[0]}).url(driver="postgresql")


async def get(sessions: Sessions, job_id: uuid.UUID) -> Job:
    async with sessions() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        return job


async def test_claims_waiting_together_commit_in_one_statement(sessions: Sessions) -> None:
    ids = await queued_jobs(sessions, 6)
    claims = Claims(engine_of(sessions), sessions, worker="w1", lease_s=30)
    found = await asyncio.gather(*(claims.claim(j) for j in ids), claims.claim(ids[0]))
    # one statement for the six; the duplicate waited for the next, and found the job taken
    assert (claims.commits.writes, claims.commits.items) == (2, 7)
    assert found[-1] is None
    for job_id, claim in zip(ids, found, strict=False):
        assert claim is not None
        assert (claim.job_id, claim.attempt, claim.kernel) == (job_id, 1, "montecarlo_pi")
        assert claim.params == {"samples": ids.index(job_id)}
        job = await get(sessions, job_id)
        assert (job.state, job.worker, job.attempts) == ("RUNNING", "w1", 1)
        assert job.lease_expires_at is not None
        assert (await events(sessions, job_id))[-1] == (1, "QUEUED", "RUNNING", "w1")


async def test_records_waiting_together_commit_in_one_statement(
    sessions: Sessions, dsn: str
) -> None:
    claims = await claimed(sessions, 5)
    records = Records(engine_of(sessions), worker="w1")
    async with Wakeups(dsn) as seen:
        accepted = await asyncio.gather(*(records.record(succeeded(c)) for c in claims))
        assert await seen.take() == ["job.finished"]  # one for the statement, not per job
    assert accepted == [True] * 5
    assert (records.commits.writes, records.commits.items) == (1, 5)
    for c in claims:
        job = await get(sessions, c.job_id)
        assert (job.state, job.result, job.lease_expires_at) == (
            "SUCCEEDED",
            {"n": c.params["samples"]},
            None,
        )
        assert job.finished_at is not None
        assert (await events(sessions, c.job_id))[-2:] == [
            (1, "QUEUED", "RUNNING", "w1"),
            (1, "RUNNING", "SUCCEEDED", "w1"),
        ]
        assert await usage(sessions, c.job_id) == [(1, "SUCCEEDED", 0.5)]


async def test_a_superseded_attempt_in_a_batch_is_refused_and_the_others_commit(
    sessions: Sessions,
) -> None:
    claims = await claimed(sessions, 4)
    stale = claims[1]
    async with sessions() as session, session.begin():  # reaped and claimed again elsewhere
        await set_job_state(session, stale.job_id, Lost(stale.attempt))
        again = await service.claim(session=session, job_id=stale.job_id, worker="w2", lease_s=30)
        assert again is not None
    records = Records(engine_of(sessions), worker="w1")
    accepted = await asyncio.gather(*(records.record(succeeded(c)) for c in claims))
    assert accepted == [True, False, True, True]
    assert records.commits.writes == 1
    job = await get(sessions, stale.job_id)
    assert (job.state, job.attempts, job.worker) == ("RUNNING", 2, "w2")
    assert await usage(sessions, stale.job_id) == []  # nothing counted for the late report
    for c in claims[:1] + claims[2:]:
        assert (await get(sessions, c.job_id)).state == "SUCCEEDED"


async def test_a_row_the_database_rejects_fails_its_own_caller_only(sessions: Sessions) -> None:
    claims = await claimed(sessions, 3)
    records = Records(engine_of(sessions), worker="w1")
    bad = Finish(
        claims[1].job_id,
        claims[1].tenant_id,
        1,
        Report(
            JobState.FAILED, error="a NUL byte \x00 PostgreSQL refuses in text", retryable=False
        ),
    )
    outcomes = await asyncio.gather(
        records.record(succeeded(claims[0])),
        records.record(bad),
        records.record(succeeded(claims[2])),
        return_exceptions=True,
    )
    assert outcomes[0] is True
    assert outcomes[2] is True
    assert isinstance(outcomes[1], Exception)
    assert (await get(sessions, claims[1].job_id)).state == "RUNNING"  # nothing of it written
    assert await usage(sessions, claims[1].job_id) == []
    for c in (claims[0], claims[2]):
        assert (await get(sessions, c.job_id)).state == "SUCCEEDED"


async def test_a_caller_cancelled_before_its_batch_writes_nothing() -> None:
    written: list[list[int]] = []
    gate = asyncio.Event()

    async def write(items: list[int]) -> list[int]:
        await gate.wait()
        written.append(items)
        return items

    commits: GroupCommit[int, int] = GroupCommit("t", write, key=lambda i: i)
    first = asyncio.create_task(commits.submit(1))
    await asyncio.sleep(0.01)  # 1 is in flight; 2 and 3 wait for the next write
    second, third = asyncio.create_task(commits.submit(2)), asyncio.create_task(commits.submit(3))
    await asyncio.sleep(0)
    second.cancel()
    gate.set()
    assert (await first, await third) == (1, 3)
    assert second.cancelled()
    assert written == [[1], [3]]


def runtime(engine: AsyncEngine, sessions: Sessions, tmp_path: Path) -> WorkerRuntime:
    storage = StorageSettings.model_validate({"local": {"root": str(tmp_path / "local")}})
    settings = WorkerSettings(name="w1", storage=storage, concurrency=8, lease_s=30)
    res = SimpleNamespace(
        engine=engine, sessions=sessions, relay=SimpleNamespace(wake=lambda: None)
    )
    return WorkerRuntime(cast(Resources, res), settings, cast(KernelRunner, InstantRunner()))


async def test_the_runtime_claims_runs_and_records_each_job(
    sessions: Sessions, tmp_path: Path
) -> None:
    rt = runtime(engine_of(sessions), sessions, tmp_path)
    ids = await queued_jobs(sessions, 6)
    await asyncio.gather(*(rt.on_dispatch(dispatched(j)) for j in ids))
    await asyncio.wait_for(asyncio.gather(*rt.jobs), 10)
    assert rt.claims.commits is rt.records.commits  # claims and records share the writes
    assert rt.claims.commits.items == 12  # a claim and a record per job
    assert rt.claims.commits.writes < 12  # what waited together committed together
    for job_id in ids:
        job = await get(sessions, job_id)
        assert (job.state, job.result) == ("SUCCEEDED", {"kernel": "montecarlo_pi"})
        assert [e[1:3] for e in await events(sessions, job_id)] == [
            ("PENDING", "QUEUED"),
            ("QUEUED", "RUNNING"),
            ("RUNNING", "SUCCEEDED"),
        ]
        assert [u[:2] for u in await usage(sessions, job_id)] == [(1, "SUCCEEDED")]
    assert not rt.leased
    assert not rt.slots.locked()


@pytest.fixture
async def proxied(
    db: tuple[str, Sessions], settings: CommonSettings
) -> AsyncIterator[tuple[TcpProxy, AsyncEngine]]:
    """An engine on the test's database through a TCP proxy the test stops and restarts."""
    proxy = TcpProxy(settings.postgres.port)
    await proxy.start()
    pg = settings.postgres.model_copy(
        update={"database": db[0], "port": proxy.port, "connect_timeout_s": 1.0}
    )
    engine = make_engine(pg)
    yield proxy, engine
    await engine.dispose()
    with contextlib.suppress(Exception):
        await proxy.stop()


async def test_records_made_while_the_database_is_away_are_retried_and_durable(
    sessions: Sessions, proxied: tuple[TcpProxy, AsyncEngine], tmp_path: Path
) -> None:
    proxy, engine = proxied
    rt = runtime(engine, make_sessionmaker(engine), tmp_path)
    claims = await claimed(sessions, 3, worker=rt.settings.name)
    await proxy.stop()  # the database goes away
    report = Report(JobState.SUCCEEDED, result={"ok": True}, cpu_seconds=0.25)
    recording = [
        asyncio.create_task(rt._record(c, report, attempt_files(rt.settings.storage, c), {}))
        for c in claims
    ]
    await asyncio.sleep(1.0)  # the records fail and retry meanwhile
    assert not any(t.done() for t in recording)
    for c in claims:
        assert (await get(sessions, c.job_id)).state == "RUNNING"
    await proxy.start()  # back, on the same port
    await asyncio.wait_for(asyncio.gather(*recording), 15)
    for c in claims:
        job = await get(sessions, c.job_id)
        assert (job.state, job.result) == ("SUCCEEDED", {"ok": True})
        assert (await events(sessions, c.job_id))[-1] == (1, "RUNNING", "SUCCEEDED", "w1")
        assert await usage(sessions, c.job_id) == [(1, "SUCCEEDED", 0.25)]


async def test_outcomes_the_statement_does_not_take_follow_the_rules(
    sessions: Sessions, tmp_path: Path, dsn: str
) -> None:
    """A user's cancel that came first (the statement does not match: the general path counts
    the attempt's usage), and a retryable failure (retry rules: the statement returns it
    unapplied)."""
    rt = runtime(engine_of(sessions), sessions, tmp_path)
    cancelled, failed = await claimed(sessions, 2, worker=rt.settings.name)
    async with sessions() as session, session.begin():  # the gateway's cancel
        assert (await set_job_state(session, cancelled.job_id, Cancelled())).accepted
    stopped = Report(JobState.CANCELLED, error="cancelled", cpu_seconds=2.0)
    await rt._record(cancelled, stopped, attempt_files(rt.settings.storage, cancelled), {})
    assert rt.records.commits.items == 1
    assert (await get(sessions, cancelled.job_id)).state == "CANCELLED"
    assert await usage(sessions, cancelled.job_id) == [(1, "CANCELLED", 2.0)]
    retry = Report(JobState.FAILED, error="flaky", retryable=True, cpu_seconds=1.0)
    async with Wakeups(dsn) as seen:
        await rt._record(failed, retry, attempt_files(rt.settings.storage, failed), {})
        assert await seen.take() == ["job.finished"]  # a slot is free, also for a retry
    assert rt.records.commits.items == 2  # offered to the statement, which left it to the rules
    job = await get(sessions, failed.job_id)
    assert (job.state, job.error, job.attempts) == ("QUEUED", "flaky", 1)
    assert job.run_after is not None
    assert (await events(sessions, failed.job_id))[-1] == (1, "RUNNING", "QUEUED", "w1")
    assert await usage(sessions, failed.job_id) == [(1, "FAILED", 1.0)]


async def test_a_slot_takes_the_next_job_while_the_last_outcome_is_recorded(
    sessions: Sessions, tmp_path: Path
) -> None:
    """The record's round trip is no part of a slot's cycle: with one slot, the second job
    is claimed and run while the first's record is held back, and the first stays leased
    (its heartbeat extends it) until its record commits."""
    rt = runtime(engine_of(sessions), sessions, tmp_path)
    rt.slots = asyncio.Semaphore(1)
    first, second = await queued_jobs(sessions, 2)
    gate = asyncio.Event()
    record = rt.records.record

    async def held(finish: Finish) -> bool:
        if finish.job_id == first:
            await gate.wait()
        return await record(finish)

    rt.records.record = held  # type: ignore[method-assign]
    await rt.on_dispatch(dispatched(first))
    await asyncio.wait_for(rt.on_dispatch(dispatched(second)), 5)  # the slot came back
    run = next(t for t in rt.jobs if t.get_name() == f"job-{second}")
    await asyncio.wait_for(run, 5)
    assert (await get(sessions, second)).state == "SUCCEEDED"
    assert (await get(sessions, first)).state == "RUNNING"  # its record still waits
    assert first in rt.leased
    gate.set()
    await asyncio.wait_for(asyncio.gather(*rt.jobs), 10)
    assert (await get(sessions, first)).state == "SUCCEEDED"
    assert not rt.leased
    assert not rt.slots.locked()


def log_statements(monkeypatch: pytest.MonkeyPatch, statements: list[str]) -> None:
    """Every statement the worker's writes send from now on goes into ``statements``."""
    real = raw_connection

    @contextlib.asynccontextmanager
    async def logged(engine: AsyncEngine) -> AsyncIterator[Any]:
        async with real(engine) as conn:

            def log(query: Any) -> None:
                statements.append(query.query)

            conn.add_query_logger(log)
            try:
                yield conn
            finally:
                conn.remove_query_logger(log)

    monkeypatch.setattr(batch, "raw_connection", logged)


async def test_a_record_and_a_claim_waiting_together_commit_in_one_statement(
    sessions: Sessions, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One job's record and the next job's claim, submitted in the same turn of the loop (a
    slot passing from one to the other), are one write of one statement: both applied, in
    one transaction, with both jobs' history, the record's usage row and one wake-up."""
    writes = Writes(engine_of(sessions), worker="w1", lease_s=30)
    claims = Claims(engine_of(sessions), sessions, worker="w1", lease_s=30, writes=writes)
    records = Records(engine_of(sessions), worker="w1", writes=writes)
    (done,) = await claimed(sessions, 1)
    (queued,) = await queued_jobs(sessions, 1)
    statements: list[str] = []
    log_statements(monkeypatch, statements)
    async with Wakeups(dsn) as seen:
        applied, claim = await asyncio.gather(records.record(succeeded(done)), claims.claim(queued))
        assert await seen.take() == [FINISHED]
    assert applied is True
    assert claim is not None
    assert claim.job_id == queued
    assert claim.params == {"samples": 0}
    assert (writes.commits.writes, writes.commits.items) == (1, 2)
    assert len(statements) == 1  # no BEGIN, no COMMIT: one round trip
    assert (await get(sessions, done.job_id)).state == "SUCCEEDED"
    assert (await get(sessions, queued)).state == "RUNNING"
    assert await usage(sessions, done.job_id) == [(1, "SUCCEEDED", 0.5)]
    assert (await events(sessions, done.job_id))[-1] == (1, "RUNNING", "SUCCEEDED", "w1")
    assert await events(sessions, queued) == [
        (0, "PENDING", "QUEUED", None),
        (1, "QUEUED", "RUNNING", "w1"),
    ]
    async with sessions() as session:
        xmins = await session.execute(
            text("SELECT DISTINCT xmin::text FROM jobs WHERE id = ANY(:ids)"),
            {"ids": [done.job_id, queued]},
        )
        assert len(xmins.all()) == 1  # one transaction


async def test_a_record_and_a_claim_in_one_statement_leave_what_they_do_not_apply(
    sessions: Sessions,
) -> None:
    """In the statement of both, a superseded attempt's record and a claim of a job that is
    no longer QUEUED are not applied, and each takes the general path: the record is
    refused, the claim comes back None; the others apply."""
    writes = Writes(engine_of(sessions), worker="w1", lease_s=30)
    claims = Claims(engine_of(sessions), sessions, worker="w1", lease_s=30, writes=writes)
    records = Records(engine_of(sessions), worker="w1", writes=writes)
    done, stale = await claimed(sessions, 2)
    fresh, taken = await queued_jobs(sessions, 2)
    async with sessions() as session, session.begin():  # another worker claimed it first
        await set_job_state(session=session, job_id=taken, proposal=Claimed("w2", 30.0))
    superseded = dataclasses.replace(succeeded(stale), attempt=stale.attempt + 1)
    results = await asyncio.gather(
        records.record(succeeded(done)),
        records.record(superseded),
        claims.claim(fresh),
        claims.claim(taken),
    )
    assert results[0] is True
    assert results[1] is False
    assert isinstance(results[2], Claim)
    assert results[3] is None
    assert writes.commits.writes == 1
    states = [(await get(sessions, j)).state for j in (done.job_id, stale.job_id, fresh, taken)]
    assert states == ["SUCCEEDED", "RUNNING", "RUNNING", "RUNNING"]
    assert (await get(sessions, taken)).worker == "w2"


async def test_a_record_in_one_statement_with_a_claim_releases_its_dependents(
    sessions: Sessions,
) -> None:
    """The triggers on ``jobs`` see the record and the claim in one statement (one
    transition table): the recorded job's dependent is released, the claimed job is not
    taken for a finished one."""
    writes = Writes(engine_of(sessions), worker="w1", lease_s=30)
    claims = Claims(engine_of(sessions), sessions, worker="w1", lease_s=30, writes=writes)
    records = Records(engine_of(sessions), worker="w1", writes=writes)
    (done,) = await claimed(sessions, 1)
    (queued,) = await queued_jobs(sessions, 1)
    waiting = uuid.uuid4()
    async with sessions() as session, session.begin():
        session.add(new_job(done.tenant_id, id=waiting, deps_left=1))
        await session.flush()
        session.add(JobDep(job_id=waiting, dep_id=done.job_id, condition="afterok"))
    applied, claim = await asyncio.gather(records.record(succeeded(done)), claims.claim(queued))
    assert applied is True
    assert claim is not None
    assert writes.commits.writes == 1
    released = await get(sessions, waiting)
    assert released.deps_left == 0
    async with sessions() as session:
        left = await session.execute(select(JobDep).where(JobDep.job_id == waiting))
        assert left.all() == []
