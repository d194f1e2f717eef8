"""Arrays as the gateway tests build them: stored as the gateway stores them, elements
materialised as the scheduler does, moved as workers and users move jobs."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Job, JobArray
from shared.events import utcnow
from shared.jobs.arrays import element_id, element_of
from shared.jobs.proposals import Cancelled, Claimed, Report, Reported
from shared.jobs.states import JobState
from shared.jobs.store import set_job_state
from tests.factories import new_array, new_job
from tests.gateway.conftest import TenantKey

PARAMS = {"samples": 10, "seed": 0}
OVERRIDES = [{"samples": 1}, {}, {"samples": 3}]
OUTPUTS = {"out": "sweep/{index}/out.npy"}
STATES = [s.value for s in JobState]


async def stored_array(
    sessions: async_sessionmaker[AsyncSession],
    tenant: TenantKey,
    size: int,
    *,
    materialised: int = 0,
    state: JobState = JobState.QUEUED,
) -> uuid.UUID:
    """An array of ``size`` montecarlo_pi elements (``seed`` the index, three overrides),
    its first ``materialised`` elements given rows in ``state`` as the scheduler does."""
    async with sessions() as s, s.begin():
        job, array = new_array(
            uuid.UUID(tenant.tenant_id),
            size,
            index_param="seed",
            max_concurrent=4,
            overrides=OVERRIDES,
            params=PARAMS,
            outputs=OUTPUTS,
            labels={"sweep": "a"},
        )
        s.add(job)
        await s.flush()
        s.add(array)
        await s.flush()
        if materialised:
            await materialise(s, job.id, materialised, state)
    return job.id


async def materialise(
    session: AsyncSession, array_id: uuid.UUID, count: int, state: JobState
) -> list[uuid.UUID]:
    """The next ``count`` elements of the array as rows in ``state`` (the scheduler's
    materialisation: ``element_of``, the parent's columns and ``created_at``)."""
    parent = await session.get(Job, array_id)
    array = await session.get(JobArray, array_id)
    assert parent is not None
    assert array is not None
    rows = []
    for i in range(array.next_index, array.next_index + count):
        e = element_of(
            params=parent.params,
            inputs=parent.inputs,
            outputs=parent.outputs,
            index=i,
            index_param=array.index_param,
            overrides=array.overrides,
        )
        rows.append(
            new_job(
                parent.tenant_id,
                id=element_id(parent.id, i),
                params=e.params,
                inputs=e.inputs,
                outputs=e.outputs,
                labels=parent.labels,
                timeout_s=parent.timeout_s,
                max_retries=parent.max_retries,
                state=state.value,
                created_at=parent.created_at,
                queued_at=utcnow() if state is JobState.QUEUED else None,
                array_id=parent.id,
                array_index=i,
            )
        )
    session.add_all(rows)
    array.next_index += count
    await session.flush()
    return [r.id for r in rows]


async def move(
    sessions: async_sessionmaker[AsyncSession], array_id: uuid.UUID, index: int, *to: JobState
) -> None:
    """Element ``index`` through ``to`` (RUNNING, SUCCEEDED, FAILED, CANCELLED), one
    ``set_job_state`` each, as the worker and the user move a job."""
    job_id = element_id(array_id, index)
    for state in to:
        async with sessions() as s, s.begin():
            proposal: Any
            if state is JobState.RUNNING:
                proposal = Claimed("w1", 60)
            elif state is JobState.CANCELLED:
                proposal = Cancelled()
            else:
                job = await s.get(Job, job_id)
                assert job is not None
                proposal = Reported(job.attempts, "w1", Report(state, retryable=False))
            assert (await set_job_state(s, job_id, proposal)).accepted


def counts(**given: int) -> dict[str, int]:
    return {s: given.get(s.lower(), 0) for s in STATES}


async def get(client: httpx.AsyncClient, tenant: TenantKey, path: str) -> dict[str, Any]:
    r = await client.get(path, headers=tenant.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


MC_JOB = {"kernel": "montecarlo_pi", "params": {"samples": 1000, "seed": 1}}
