"""The set-based transitions of ``shared.jobs.store`` against the one rule, ``decide``, on a
database of its own: every from-state, every proposed state, attempts on either side of
``max_retries``, retryable or not, the report's attempt current or not.

Each case runs on two jobs alike: one through the statement (``admit_pending``,
``claim_queued``, ``finish_attempts``), its twin through the general path (``set_job_state``,
and for a record the worker's ``service.record``). The statement may apply a case only where
``decide`` accepts it and takes the proposed state as it is, and then must leave exactly what
the general path leaves (row, history, usage row, event); a case it does not apply it must not
touch, for the general path to decide. The proposals no statement takes (a lost worker, a
user's cancel, the platform's failure) are held to ``decide`` on the general path alone."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.worker import service as worker
from shared.db.models import Job, JobAttempt, JobEvent, Tenant
from shared.events import utcnow
from shared.jobs.proposals import Cancelled, Claimed, Failed, Lost, Proposal, Report
from shared.jobs.states import FINAL, JobState, decide
from shared.jobs.store import (
    ADMIT_REASON,
    Claim,
    Finish,
    admit_pending,
    claim_queued,
    finish_attempts,
    record_and_claim,
    session_fetch,
    set_job_state,
)
from shared.settings import CommonSettings
from tests.factories import new_job, own_database
from tests.wakeups import Wakeups

Sessions = async_sessionmaker[AsyncSession]
S = JobState
# (attempts, max_retries): retries left, the last retry, none left
RETRIES = [(1, 2), (3, 2), (2, 1)]
LEASE_S = 30.0


@pytest.fixture(scope="module")
async def db(settings: CommonSettings) -> AsyncIterator[Sessions]:
    async with own_database(settings, "statepaths") as (_, sessions):
        yield sessions


@pytest.fixture(scope="module")
def dsn(db: Sessions, settings: CommonSettings) -> str:
    name = f"{settings.postgres.database}_statepaths"  # own_database's
    return settings.postgres.model_copy(update={"database": name}).url(driver="postgresql")


async def jobs_in(db: Sessions, cases: Iterable[tuple[JobState, int, int]]) -> list[uuid.UUID]:
    """One job per case, in its state with its attempts and ``max_retries`` (a RUNNING one
    held by worker ``w0``), with what earlier steps said (which a transition may clear)."""
    tid, now, ids = uuid.uuid4(), utcnow(), []
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"p{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
        await session.flush()
        for state, attempts, max_retries in cases:
            running = state is S.RUNNING
            ids.append(uuid.uuid4())
            session.add(
                new_job(
                    tid,
                    id=ids[-1],
                    state=state.value,
                    attempts=attempts,
                    max_retries=max_retries,
                    worker="w0" if running else None,
                    started_at=now if running else None,
                    lease_expires_at=now + timedelta(seconds=LEASE_S) if running else None,
                    finished_at=now if state in FINAL else None,
                    error="an earlier attempt failed",
                    state_reason="what an earlier step said",
                )
            )
    return ids


async def effects(db: Sessions, job_ids: list[uuid.UUID]) -> list[dict[str, Any]]:
    """What transitions left of each job, times as whether they are set (two paths never
    run at the same instant)."""
    async with db() as session:
        jobs = {j.id: j for j in await session.scalars(select(Job).where(Job.id.in_(job_ids)))}
        history = await session.execute(
            select(
                JobEvent.job_id,
                JobEvent.attempt,
                JobEvent.from_state,
                JobEvent.to_state,
                JobEvent.reason,
            )
            .where(JobEvent.job_id.in_(job_ids))
            .order_by(JobEvent.id)
        )
        usage = await session.execute(
            select(
                JobAttempt.job_id, JobAttempt.attempt, JobAttempt.outcome, JobAttempt.cpu_seconds
            ).where(JobAttempt.job_id.in_(job_ids))
        )
    found: dict[uuid.UUID, dict[str, Any]] = {
        job_id: {"history": [], "usage": []} for job_id in job_ids
    }
    for job_id, *event in history:
        found[job_id]["history"].append(tuple(event))
    for job_id, *row in usage:
        found[job_id]["usage"].append(tuple(row))
    for job_id, job in jobs.items():
        lease = None
        if job.lease_expires_at is not None and job.started_at is not None:
            lease = (job.lease_expires_at - job.started_at).total_seconds()
        found[job_id] |= {
            "row": (job.state, job.attempts, job.worker, job.error, job.state_reason, job.result),
            "set": tuple(
                getattr(job, c) is not None
                for c in ("queued_at", "started_at", "finished_at", "run_after", "lease_expires_at")
            ),
            "lease_s": lease,
        }
    return [found[job_id] for job_id in job_ids]


async def test_admit_pending_queues_every_pending_job_and_touches_no_other(db: Sessions) -> None:
    cases = [(s, a, m) for s in S for a, m in RETRIES]
    ids = await jobs_in(db, cases)
    before = await effects(db, ids)
    async with db() as session, session.begin():
        admitted = {a.job_id for a in await admit_pending(session_fetch(session), limit=1000)}
    after = await effects(db, ids)
    for case, job_id, was, now in zip(cases, ids, before, after, strict=True):
        state, attempts, max_retries = case
        if job_id not in admitted:
            assert state is not S.PENDING, "a waiting job left PENDING"
            assert now == was, case
            continue
        decided = decide(state, S.QUEUED, attempts=attempts, max_retries=max_retries)
        assert (state, decided.state) == (S.PENDING, S.QUEUED)
        assert (now["row"][0], now["row"][4]) == ("QUEUED", ADMIT_REASON)
        assert (now["row"][1:4], now["row"][5]) == (was["row"][1:4], was["row"][5])
        assert now["set"][0]  # queued_at
        assert now["history"] == [(0, "PENDING", "QUEUED", ADMIT_REASON)]


async def test_claim_queued_does_what_the_general_path_does(db: Sessions) -> None:
    cases = [(s, a, m) for s in S for a, m in RETRIES]
    ids, twins = await jobs_in(db, cases), await jobs_in(db, cases)
    before = await effects(db, ids)
    async with db() as session, session.begin():
        claimed = await claim_queued(session_fetch(session), ids, worker="w1", lease_s=LEASE_S)
        general = [await set_job_state(session, t, Claimed("w1", LEASE_S)) for t in twins]
    after, twins_after = await effects(db, ids), await effects(db, twins)
    for i, (state, attempts, max_retries) in enumerate(cases):
        decided = decide(state, S.RUNNING, attempts=attempts, max_retries=max_retries)
        assert (ids[i] in claimed) is decided.accepted is general[i].accepted, cases[i]
        if ids[i] not in claimed:
            assert after[i] == before[i], cases[i]
            continue
        assert decided.state is S.RUNNING
        assert after[i] == twins_after[i], cases[i]
        assert after[i]["lease_s"] == LEASE_S
        twin_claim = Claim.of(general[i].job)
        assert claimed[ids[i]] == replace(
            twin_claim, job_id=ids[i], tenant_id=claimed[ids[i]].tenant_id
        )


def report(state: JobState, retryable: bool) -> Report:
    result = {"pi": 3.14} if state is S.SUCCEEDED else None
    error = None if state is S.SUCCEEDED else f"{state.lower()} here"
    return Report(state, result, error, retryable, cpu_seconds=1.5, wall_seconds=2.0)


async def test_finish_attempts_does_what_the_general_path_does(db: Sessions, dsn: str) -> None:
    cases = list(itertools.product(S, RETRIES, S, (True, False), (True, False)))
    ids = await jobs_in(db, [(s, a, m) for s, (a, m), *_ in cases])
    twins = await jobs_in(db, [(s, a, m) for s, (a, m), *_ in cases])
    before = await effects(db, ids)
    async with db() as session, session.begin():
        claims = [
            replace(Claim.of(j), attempt=j.attempts if current else j.attempts + 1)
            for j, (*_, current) in zip(
                [await session.get_one(Job, t) for t in twins], cases, strict=True
            )
        ]
    reports = [report(proposed, retryable) for _, _, proposed, retryable, _ in cases]
    finishes = [
        Finish(job_id, c.tenant_id, c.attempt, r)
        for job_id, c, r in zip(ids, claims, reports, strict=True)
    ]
    async with Wakeups(dsn) as seen:
        async with db() as session, session.begin():
            left = await finish_attempts(session_fetch(session), finishes, worker="w1")
        # each path wakes the scheduler once in its commit, however many jobs it finished
        assert await seen.take() == ["job.finished"]
        async with db() as session, session.begin():
            accepted = [
                await worker.record(session=session, claim=c, worker="w1", report=r)
                for c, r in zip(claims, reports, strict=True)
            ]
        assert await seen.take() == ["job.finished"]
    not_applied = {f.job_id for f in left}
    after, twins_after = await effects(db, ids), await effects(db, twins)
    for i, case in enumerate(cases):
        state, (attempts, max_retries), proposed, retryable, current = case
        decided = decide(
            state, proposed, attempts=attempts, max_retries=max_retries, retryable=retryable
        )
        fenced = state not in FINAL and (state is not S.RUNNING or not current)
        assert accepted[i] is (decided.accepted and not fenced), case
        if ids[i] in not_applied:
            assert after[i] == before[i], case
            # what it left, it could not apply: retry rules, or the general path refuses
            assert not (finishes[i].without_rules and accepted[i]), case
            continue
        assert decided.state is proposed, case  # what the statement applies, decide takes as is
        assert accepted[i], case
        assert after[i] == twins_after[i], case
        assert after[i]["usage"] == [(attempts, proposed.value, 1.5)]


async def test_the_general_path_takes_what_decide_says_and_fences_attempts(
    db: Sessions,
) -> None:
    """The reaper's, the user's and the platform's proposals from every state: the state
    ``decide`` gives, and a lost attempt only while the job runs that attempt."""
    proposals: list[Proposal] = [Cancelled(), Failed("an input is gone")]
    cases = [
        (state, attempts, max_retries, proposal)
        for state, (attempts, max_retries) in itertools.product(S, RETRIES)
        for proposal in [*proposals, Lost(attempts), Lost(attempts + 1)]
    ]
    ids = await jobs_in(db, [c[:3] for c in cases])
    async with db() as session, session.begin():
        changes = [await set_job_state(session, j, c[3]) for j, c in zip(ids, cases, strict=True)]
    for (state, attempts, max_retries, proposal), change in zip(cases, changes, strict=True):
        decided = decide(
            state,
            proposal.state,
            attempts=attempts,
            max_retries=max_retries,
            retryable=not isinstance(proposal, Failed),
        )
        fenced = (
            isinstance(proposal, Lost)
            and state not in FINAL
            and (state is not S.RUNNING or proposal.attempt != attempts)
        )
        expected = None if fenced else decided.state
        assert (change.accepted, change.decision.state) == (expected is not None, expected)
        assert change.state is (expected or state), (state, attempts, proposal)


async def test_record_and_claim_does_what_its_two_statements_do(db: Sessions, dsn: str) -> None:
    """The worker's statement of both (a record and the next claim, ``record_and_claim``)
    does to jobs in every state what ``finish_attempts`` and ``claim_queued`` do alone: the
    same rows, history and usage, the same jobs left to the general path, one wake-up."""
    finish_cases = list(itertools.product(S, RETRIES, S, (True, False), (True, False)))
    claim_cases = [(s, a, m) for s in S for a, m in RETRIES]

    async def made() -> tuple[list[uuid.UUID], list[Finish], list[uuid.UUID]]:
        ids = await jobs_in(db, [(s, a, m) for s, (a, m), *_ in finish_cases])
        async with db() as session:
            finishes = [
                Finish(
                    j.id,
                    j.tenant_id,
                    j.attempts if current else j.attempts + 1,
                    report(proposed, retryable),
                )
                for j, (_, _, proposed, retryable, current) in zip(
                    [await session.get_one(Job, i) for i in ids], finish_cases, strict=True
                )
            ]
        return ids, finishes, await jobs_in(db, claim_cases)

    (ids, finishes, to_claim), (twins, twin_finishes, twins_to_claim) = await made(), await made()
    async with Wakeups(dsn) as seen:
        async with db() as session, session.begin():
            claimed, left = await record_and_claim(
                session_fetch(session), finishes, to_claim, worker="w1", lease_s=LEASE_S
            )
        assert await seen.take() == ["job.finished"]
    async with db() as session, session.begin():
        twin_left = await finish_attempts(session_fetch(session), twin_finishes, worker="w1")
        twin_claimed = await claim_queued(
            session_fetch(session), twins_to_claim, worker="w1", lease_s=LEASE_S
        )
    assert await effects(db, ids + to_claim) == await effects(db, twins + twins_to_claim)
    position = {j: i for i, j in enumerate(ids + to_claim)}
    twin_position = {j: i for i, j in enumerate(twins + twins_to_claim)}
    assert sorted(position[f.job_id] for f in left) == sorted(
        twin_position[f.job_id] for f in twin_left
    )
    assert sorted(position[j] for j in claimed) == sorted(twin_position[j] for j in twin_claimed)
    assert claimed, "no case claimed: the comparison above proves nothing"
    assert len(left) < len(finishes), "no case recorded: the comparison above proves nothing"
    for job_id, claim in claimed.items():
        twin = twin_claimed[(twins + twins_to_claim)[position[job_id]]]
        assert claim == replace(twin, job_id=job_id, tenant_id=claim.tenant_id)
