"""The chaos suite's database checks against rows written here (the test database, a tenant
of each test's own): elements (their rows' start and end) with more running at once than the
array's ``max_concurrent`` is found, counts changed behind the trigger's back are found, and
hourly usage buckets that are not the sums of the attempts are found; a clean array and its
usage give no finding."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db.models import JobAttempt, JobEvent, Tenant
from shared.events import utcnow
from shared.jobs.arrays import element_id
from tests.chaos import checks
from tests.chaos.array_checks import collect_arrays
from tests.factories import new_array, new_job

Sessions = async_sessionmaker[AsyncSession]
SIZE, BOUND = 3, 2


async def _succeeded_array(sessions: Sessions, starts: list[float]) -> tuple[uuid.UUID, uuid.UUID]:
    """A tenant with an array of ``SIZE`` SUCCEEDED elements (max_concurrent ``BOUND``),
    element ``i`` RUNNING from ``starts[i]`` for 1 s (seconds from now), each with its
    attempt's usage row: (tenant, array)."""
    tid, t0 = uuid.uuid4(), utcnow()
    async with sessions() as session, session.begin():
        session.add(Tenant(id=tid, name=f"t{tid.hex[:8]}", weight=1, quotas={}))
        await session.flush()
        job, array = new_array(tid, SIZE, index_param="seed", max_concurrent=BOUND)
        session.add(job)
        await session.flush()
        session.add(array)
        await session.flush()
        for i, start in enumerate(starts):
            eid = element_id(job.id, i)
            params = {**job.params, "seed": i}
            ran = t0 + timedelta(seconds=start)
            element = new_job(
                tid,
                id=eid,
                array_id=job.id,
                array_index=i,
                params=params,
                started_at=ran,  # the peaks are read from the rows' times
                finished_at=ran + timedelta(seconds=1),
            )
            session.add(element)
            await session.flush()
            session.add_all(_history(eid, tid, t0 + timedelta(seconds=start)))
        # the element rows' state changes go through the trigger, as the services' do
        await session.execute(
            text("UPDATE jobs SET state = 'SUCCEEDED', attempts = 1 WHERE array_id = :a"),
            {"a": job.id},
        )
    return tid, job.id


def _history(job_id: uuid.UUID, tid: uuid.UUID, ran: datetime) -> list[object]:
    """Attempt 1 of ``job_id``: RUNNING at ``ran``, SUCCEEDED a second later, its usage."""
    done = ran + timedelta(seconds=1)
    return [
        JobEvent(job_id=job_id, attempt=1, from_state="QUEUED", to_state="RUNNING", at=ran),
        JobEvent(job_id=job_id, attempt=1, from_state="RUNNING", to_state="SUCCEEDED", at=done),
        JobAttempt(job_id=job_id, attempt=1, tenant_id=tid, outcome="SUCCEEDED", cpu_seconds=0.5),
    ]


async def test_an_array_run_within_its_bound_has_no_finding(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    tid, array_id = await _succeeded_array(sessions, [0.0, 0.5, 1.0])  # 2 at once, then 1
    async with engine.connect() as conn:
        f = await collect_arrays(conn, [tid], submitted=1)
        findings = checks.Findings()
        await checks.check_usage(conn, [tid], findings)
    assert f.problems() == []
    assert f.peaks == {str(array_id): (BOUND, BOUND)}
    assert f.elements == SIZE
    assert findings.usage_hours_wrong == []
    assert findings.usage_rows == SIZE


async def test_more_elements_running_at_once_than_max_concurrent_is_found(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    tid, array_id = await _succeeded_array(sessions, [0.0, 0.2, 0.4])  # 3 at once
    async with engine.connect() as conn:
        f = await collect_arrays(conn, [tid], submitted=1)
    assert f.over_max_concurrent == [f"{array_id}: 3 running, max_concurrent {BOUND}"]


async def test_counts_and_usage_buckets_changed_behind_the_triggers_are_found(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    tid, array_id = await _succeeded_array(sessions, [0.0, 1.0, 2.0])
    async with sessions() as session, session.begin():
        await session.execute(
            text(
                "UPDATE job_arrays SET n_succeeded = n_succeeded - 1, n_failed = 1 "
                "WHERE job_id = :a"
            ),
            {"a": array_id},
        )
        await session.execute(
            text("UPDATE usage_hours SET attempts = attempts + 1 WHERE tenant_id = :t"),
            {"t": tid},
        )
    async with engine.connect() as conn:
        f = await collect_arrays(conn, [tid], submitted=1)
        findings = checks.Findings()
        await checks.check_usage(conn, [tid], findings)
    assert len(f.counts_wrong) == 1
    assert f.states_wrong == [f"{array_id}: SUCCEEDED, counts give FAILED"]
    assert len(findings.usage_hours_wrong) == 1
