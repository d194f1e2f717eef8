"""An array's counts and state through every path that writes an element's state: after any
sequence of materialisations, admissions, claims, records (succeeded, failed with and
without retries, timed out, handed back), lost workers, cancels of materialised and of
virtual elements, ``job_arrays``' counts equal a GROUP BY over the element rows plus the
elements without one, the array's own state is ``Counts.state`` of them, and no array has
more live elements than its bound."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler import service
from services.worker import service as worker
from shared.db.models import Job, JobArray, JobAttempt, JobEvent, Tenant
from shared.events import utcnow
from shared.jobs.arrays import COUNT_COLUMNS, Counts, element_id
from shared.jobs.materialise import materialise_elements
from shared.jobs.proposals import Cancelled, Report
from shared.jobs.states import FINAL, JobState
from shared.jobs.store import (
    Claim,
    Finish,
    admit_pending,
    claim_queued,
    finish_attempts,
    session_fetch,
    set_job_state,
)
from shared.jobs.usage import LOST
from tests.factories import new_array

Sessions = async_sessionmaker[AsyncSession]
S = JobState
WINDOW = 4
# the element transitions each sequence takes (as ``job_events`` records them)
EVERY_PATH = {
    ("PENDING", "QUEUED"),
    ("QUEUED", "RUNNING"),
    ("RUNNING", "SUCCEEDED"),
    ("RUNNING", "FAILED"),
    ("RUNNING", "TIMED_OUT"),
    ("RUNNING", "QUEUED"),
    ("QUEUED", "CANCELLED"),
    ("RUNNING", "CANCELLED"),
}
# (size, max_concurrent, inputs) of the arrays each sequence runs
ARRAYS: list[tuple[int, int | None, dict[str, str]]] = [
    (12, None, {}),
    (9, 2, {}),
    (7, 3, {"grid": "grid-{index}"}),
]


async def _arrays(s: Sessions) -> list[uuid.UUID]:
    """The arrays of ``ARRAYS``, created one millisecond apart (their elements are listed in
    that order, then by index, so that a seed makes the same sequence every time)."""
    tid, base = uuid.uuid4(), utcnow()
    ids = []
    async with s() as session, session.begin():
        session.add(Tenant(id=tid, name=f"t{tid.hex[:8]}", weight=1, quotas={}))
        await session.flush()
        for n, (size, max_concurrent, inputs) in enumerate(ARRAYS):
            job, array = new_array(
                tid,
                size,
                max_concurrent=max_concurrent,
                inputs=inputs,
                max_retries=1,
                created_at=base + timedelta(milliseconds=n),
            )
            session.add(job)
            await session.flush()
            session.add(array)
            ids.append(job.id)
    return ids


async def _elements(session: AsyncSession, state: S | None = None) -> list[Job]:
    query = select(Job).where(Job.array_id.is_not(None)).order_by(Job.created_at, Job.array_index)
    if state is not None:
        query = query.where(Job.state == state.value)
    return list(await session.scalars(query))


async def _claim(session: AsyncSession, rng: random.Random) -> None:
    queued = await _elements(session, S.QUEUED)
    picked = rng.sample(queued, min(len(queued), rng.randint(1, 3)))
    await claim_queued(session_fetch(session), [j.id for j in picked], worker="w", lease_s=30)


async def _record(session: AsyncSession, rng: random.Random) -> None:
    """Records of running elements: the set-based statement where it applies, the general
    path (retry rules) for the rest, as the worker's batches do."""
    running = await _elements(session, S.RUNNING)
    picked = rng.sample(running, min(len(running), rng.randint(1, 3)))
    outcomes = [
        Report(S.SUCCEEDED, result={"pi": 3.1}),
        Report(S.FAILED, error="boom", retryable=True),
        Report(S.FAILED, error="bad", retryable=False),
        Report(S.TIMED_OUT, error="slow"),
        Report(S.QUEUED),  # handed back unfinished
    ]
    finishes = [Finish(j.id, j.tenant_id, j.attempts, rng.choice(outcomes)) for j in picked]
    left = await finish_attempts(session_fetch(session), finishes, worker="w")
    for f in left:
        job = await session.get_one(Job, f.job_id)
        claim = Claim.of(job)
        await worker.record(session=session, claim=claim, worker="w", report=f.report)


async def _lose(session: AsyncSession, rng: random.Random) -> None:
    await service.requeue_lost(session=session, now=utcnow() + timedelta(hours=1))


async def _cancel(session: AsyncSession, rng: random.Random) -> None:
    live = [j for j in await _elements(session) if j.state not in FINAL]
    running = [j for j in live if j.state == S.RUNNING]
    if running and rng.random() < 0.5:
        await set_job_state(session, rng.choice(running).id, Cancelled())
    elif live:
        await set_job_state(session, rng.choice(live).id, Cancelled())


async def _cancel_virtual(
    session: AsyncSession, rng: random.Random, arrays: list[uuid.UUID]
) -> None:
    """A CANCELLED row for an element without one, as the cancel of a virtual element
    writes it (the array row locked first)."""
    aid = rng.choice(arrays)
    array = await session.get_one(JobArray, aid, with_for_update=True)
    have = {j.array_index for j in await session.scalars(select(Job).where(Job.array_id == aid))}
    free = [i for i in range(array.next_index, array.size) if i not in have]
    if not free:
        return
    i, parent = rng.choice(free), await session.get_one(Job, aid)
    session.add(
        Job(
            id=element_id(aid, i),
            tenant_id=parent.tenant_id,
            kernel=parent.kernel,
            device=parent.device,
            params=parent.params,
            inputs={},
            outputs={},
            labels={},
            priority=0,
            timeout_s=parent.timeout_s,
            max_retries=parent.max_retries,
            state="CANCELLED",
            attempts=0,
            finished_at=utcnow(),
            array_id=aid,
            array_index=i,
        )
    )
    await session.flush()


async def _check(s: Sessions, arrays: list[uuid.UUID], step: Any) -> bool:
    """The invariants; whether every array is final."""
    finals = []
    async with s() as session:
        for aid in arrays:
            array = await session.get_one(JobArray, aid)
            parent = await session.get_one(Job, aid)
            rows = list(await session.scalars(select(Job).where(Job.array_id == aid)))
            by_state = Counter(JobState(j.state) for j in rows)
            virtual = array.size - len(rows)
            by_state[S.CANCELLED if array.cancelled else S.PENDING] += virtual
            counts = {st: getattr(array, col) for st, col in COUNT_COLUMNS.items()}
            assert counts == {st: by_state[st] for st in COUNT_COLUMNS}, step
            summary = Counts(
                size=array.size,
                cancelled=array.cancelled,
                pending=array.n_pending,
                queued=array.n_queued,
                running=array.n_running,
                succeeded=array.n_succeeded,
                failed=array.n_failed,
                cancelled_n=array.n_cancelled,
                timed_out=array.n_timed_out,
            )
            assert parent.state == summary.state().value, step
            live = sum(j.state not in FINAL for j in rows)
            assert live <= min(array.max_concurrent or WINDOW, WINDOW), step
            finals.append(parent.state in FINAL)
    return all(finals)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_counts_follow_every_state_path(s: Sessions, seed: int) -> None:
    rng = random.Random(seed)
    arrays = await _arrays(s)
    await _check(s, arrays, "created")
    steps = ["materialise", "admit", "claim", "record", "record", "lose", "cancel", "virtual"]
    weights = [4, 2, 5, 5, 5, 2, 2, 1]
    for n in range(400):
        step = rng.choices(steps, weights)[0]
        async with s() as session, session.begin():
            if step == "materialise":
                await materialise_elements(session_fetch(session), window=WINDOW, limit=8)
            elif step == "admit":
                await admit_pending(session_fetch(session), limit=rng.randint(1, 4))
            elif step == "claim":
                await _claim(session, rng)
            elif step == "record":
                await _record(session, rng)
            elif step == "lose":
                await _lose(session, rng)
            elif step == "cancel":
                await _cancel(session, rng)
            else:
                await _cancel_virtual(session, rng, arrays)
        if await _check(s, arrays, (n, step)):
            break
    else:
        pytest.fail("the arrays did not finish")
    async with s() as session:
        paths = {
            (a, b) for a, b in await session.execute(select(JobEvent.from_state, JobEvent.to_state))
        }
        lost = await session.scalar(
            select(func.count()).select_from(JobAttempt).where(JobAttempt.outcome == LOST)
        )
    assert paths >= EVERY_PATH, EVERY_PATH - paths  # the sequence went every way
    assert lost
