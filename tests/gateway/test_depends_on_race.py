"""The release race: a dependency that ends while its dependents are being submitted never
strands one. Each round submits dependents concurrently while the dependency's record
commits among them; every dependent must end released (``deps_left`` 0), none left waiting
on an edge that nothing will settle."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.jobs.proposals import Claimed, Report, Reported
from shared.jobs.states import JobState
from shared.jobs.store import set_job_state
from tests.gateway.conftest import TenantKey
from tests.gateway.test_depends_on import after, submit

Sessions = async_sessionmaker[AsyncSession]
ROUNDS = 6
DEPENDENTS = 12


async def record(sessions: Sessions, job_id: uuid.UUID, pause_s: float) -> None:
    await asyncio.sleep(pause_s)
    async with sessions() as s, s.begin():
        proposal = Reported(1, "w1", Report(JobState.SUCCEEDED, retryable=False))
        assert (await set_job_state(s, job_id, proposal)).accepted


async def test_a_dependency_ending_during_submissions_strands_no_dependent(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    for round_ in range(ROUNDS):
        a = await submit(client, tenant)
        aid = uuid.UUID(a["id"])
        async with sessions() as s, s.begin():
            assert (await set_job_state(s, aid, Claimed("w1", 60))).accepted
        # the record lands among the submissions: early rounds sooner, later ones later
        submissions = [submit(client, tenant, **after(a["id"])) for _ in range(DEPENDENTS)]
        answers = await asyncio.gather(
            *submissions, record(sessions, aid, 0.005 * round_), return_exceptions=False
        )
        ids = [uuid.UUID(b["id"]) for b in answers[:DEPENDENTS] if b is not None]
        assert len(ids) == DEPENDENTS
        async with sessions() as s:
            rows = (
                await s.execute(
                    text(
                        "SELECT deps_left, state, coalesce(state_reason, '') FROM jobs"
                        " WHERE id = ANY(:ids)"
                    ),
                    {"ids": ids},
                )
            ).all()
            edges = await s.scalar(
                text("SELECT count(*) FROM job_deps WHERE job_id = ANY(:ids)"), {"ids": ids}
            )
        assert edges == 0
        assert {tuple(r) for r in rows} == {(0, "PENDING", "")}
