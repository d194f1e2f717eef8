""" "Runnable now" is one rule (``runnable.runnable_now``): the dispatch pass's candidates and the
autoscaler's demand agree on it, job by job, over the cases that make a waiting job runnable
or not (retry backoff, inputs on ``local``, staging in, a failed stage-in)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler import runnable, service
from services.scheduler.demand import jobs_per_tenant
from shared.db.models import Migration, Tenant
from shared.events import utcnow
from shared.settings import QuotaDefaults
from tests.factories import admit_jobs, admitted_with_input, new_job

Sessions = async_sessionmaker[AsyncSession]


async def _tenant(s: Sessions) -> uuid.UUID:
    tid = uuid.uuid4()
    async with s() as session, session.begin():
        session.add(Tenant(id=tid, name=f"r{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
    return tid


async def _queued(s: Sessions, tid: uuid.UUID, **fields: object) -> uuid.UUID:
    jid = uuid.uuid4()
    async with s() as session, session.begin():
        session.add(new_job(tid, id=jid, **fields))
    async with s() as session, session.begin():
        assert await admit_jobs(session=session, job_ids=[jid]) == 1
    return jid


async def no_inputs(s: Sessions, tid: uuid.UUID) -> uuid.UUID:
    return await _queued(s, tid)


async def backoff_ahead(s: Sessions, tid: uuid.UUID) -> uuid.UUID:
    return await _queued(s, tid, run_after=utcnow() + timedelta(hours=1))


async def backoff_passed(s: Sessions, tid: uuid.UUID) -> uuid.UUID:
    return await _queued(s, tid, run_after=utcnow() - timedelta(seconds=1))


async def input_on_local(s: Sessions, tid: uuid.UUID) -> uuid.UUID:
    return await admitted_with_input(s, tid, "here.npy", ["archive", "local"])


async def input_staging(s: Sessions, tid: uuid.UUID) -> uuid.UUID:
    return await admitted_with_input(s, tid, "cold.npy", ["archive"])


async def one_input_of_two_staging(s: Sessions, tid: uuid.UUID) -> uuid.UUID:
    await admitted_with_input(s, tid, "near.npy", ["local"])
    return await admitted_with_input(
        s, tid, "far.npy", ["archive"], inputs={"a": "near.npy", "b": "far.npy"}
    )


async def stage_in_failed(s: Sessions, tid: uuid.UUID) -> uuid.UUID:
    jid = await admitted_with_input(s, tid, "lost.npy", ["s3"])
    async with s() as session, session.begin():
        await session.execute(
            update(Migration).where(Migration.job_id == jid).values(state="FAILED", error="gone")
        )
    return jid


# case -> (runnable now, the dispatch pass fails it)
CASES: dict[Callable[[Sessions, uuid.UUID], Awaitable[uuid.UUID]], tuple[bool, bool]] = {
    no_inputs: (True, False),
    backoff_ahead: (False, False),
    backoff_passed: (True, False),
    input_on_local: (True, False),
    input_staging: (False, False),
    one_input_of_two_staging: (False, False),
    stage_in_failed: (True, True),
}


@pytest.mark.parametrize("case", list(CASES), ids=[c.__name__ for c in CASES])
async def test_dispatch_and_demand_apply_the_same_rule(
    s: Sessions, case: Callable[[Sessions, uuid.UUID], Awaitable[uuid.UUID]]
) -> None:
    tid = await _tenant(s)
    jid = await case(s, tid)
    expected, fails = CASES[case]
    async with service.open_pass(s.kw["bind"], s) as p:
        waiting = await runnable.candidates(
            p.conn,
            device="cpu",
            per_tenant=100,
            quota_defaults=QuotaDefaults(),
            half_life_s=3600.0,
        )
    load = waiting.tenants.get(tid)
    offered = load is not None and jid in {c.job_id for c in load.candidates}
    assert (offered or jid in waiting.stage_in_failed) is expected
    assert (jid in waiting.stage_in_failed) is fails
    async with s() as session:
        pools = (await jobs_per_tenant(session=session, any_pool="cpu"))[tid].pools
    # other jobs of the case (a dataset's first reader) are on local: runnable
    others = pools["cpu"].waiting - 1
    assert pools["cpu"].runnable - others == int(expected)
