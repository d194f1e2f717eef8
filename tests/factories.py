"""Rows for tests that need a job in the database without going through the API, and the
database (and vhost) of their own that such tests work in."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.engine import make_engine, make_sessionmaker
from shared.db.models import Dataset, Job, JobArray, JobAttempt, Migration, Tenant
from shared.db.raw import raw_connection
from shared.events import utcnow
from shared.jobs.store import admit_pending, session_fetch
from shared.settings import CommonSettings
from shared.storage.stagein import request_stage_ins
from tests.databases import copy_database, delete_vhost, new_vhost
from tools.cluster import drop_database


@asynccontextmanager
async def own_database(
    settings: CommonSettings, suffix: str, *, vhost: bool = False
) -> AsyncIterator[tuple[str, async_sessionmaker[AsyncSession]]]:
    """A migrated database ``<test database>_<suffix>`` (and a vhost of that name), dropped on
    exit: (its name, sessions on it)."""
    name = f"{settings.postgres.database}_{suffix}"
    copy_database(name, settings.postgres.database)
    if vhost:
        new_vhost(name)
    engine = make_engine(settings.postgres.model_copy(update={"database": name}))
    try:
        yield name, make_sessionmaker(engine)
    finally:
        await engine.dispose()
        drop_database(name)
        if vhost:
            delete_vhost(name)


# Copies of the one job of ``template_job``'s database: $1 their state, $2 their attempts,
# $3 how many (set-based, for tests that need a table of some thousands of jobs).
COPY_JOBS = (
    "INSERT INTO jobs (id, tenant_id, kernel, device, params, inputs, outputs, labels,"
    " priority, timeout_s, max_retries, state, attempts)"
    " SELECT gen_random_uuid(), tenant_id, kernel, device, params, inputs, outputs,"
    " labels, priority, timeout_s, max_retries, $1, $2"
    " FROM (SELECT * FROM jobs LIMIT 1) AS template, generate_series(1, $3)"
)


async def template_job(sessions: async_sessionmaker[AsyncSession], name: str) -> None:
    """A tenant ``name`` with one SUCCEEDED job: the template of ``copy_jobs``."""
    tenant_id = uuid.uuid4()
    async with sessions() as s, s.begin():
        s.add(Tenant(id=tenant_id, name=name, weight=1, quotas={}, suspended=False))
        await s.flush()
        s.add(new_job(tenant_id, state="SUCCEEDED"))


async def copy_jobs(
    sessions: async_sessionmaker[AsyncSession], state: str, attempts: int, n: int
) -> None:
    """``n`` copies of ``template_job``'s job in ``state`` with ``attempts``."""
    async with raw_connection(sessions.kw["bind"]) as conn:
        await conn.execute(COPY_JOBS, state, attempts, n)


def new_job(tenant_id: uuid.UUID, **fields: Any) -> Job:
    """A PENDING ``montecarlo_pi`` job on the CPU; ``fields`` override any column."""
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "kernel": "montecarlo_pi",
        "device": "cpu",
        "params": {"samples": 1},
        "inputs": {},
        "outputs": {},
        "labels": {},
        "priority": 0,
        "timeout_s": 60,
        "max_retries": 2,
        "state": "PENDING",
        "attempts": 0,
    }
    values.update(fields)
    return Job(**values)


def new_array(
    tenant_id: uuid.UUID,
    size: int,
    *,
    index_param: str | None = None,
    max_concurrent: int | None = None,
    overrides: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> tuple[Job, JobArray]:
    """An array of ``size`` elements as the gateway stores it: its own PENDING row
    (``new_job`` with ``fields``, ``is_array``) and its ``job_arrays`` row, every element
    pending and none materialised. Add the job first (flush) and then the array."""
    job = new_job(tenant_id, is_array=True, **fields)
    array = JobArray(
        job_id=job.id,
        tenant_id=tenant_id,
        size=size,
        index_param=index_param,
        max_concurrent=max_concurrent,
        overrides=overrides,
        next_index=0,
        cancelled=False,
        n_pending=size,
    )
    return job, array


def cpu_used(
    job_id: uuid.UUID, tenant_id: uuid.UUID, seconds: float, *, ago_s: float = 3600
) -> JobAttempt:
    """A SUCCEEDED first attempt of ``job_id`` that used ``seconds`` of CPU, ``ago_s`` ago
    (what ``cpu_seconds_per_day`` counts)."""
    return JobAttempt(
        job_id=job_id,
        attempt=1,
        tenant_id=tenant_id,
        outcome="SUCCEEDED",
        cpu_seconds=seconds,
        finished_at=utcnow() - timedelta(seconds=ago_s),
    )


async def admitted_with_input(
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID,
    dataset: str,
    tiers: list[str],
    **fields: Any,
) -> uuid.UUID:
    """A dataset ``dataset`` on ``tiers`` (its tier the first), and a job reading it (its
    ``inputs`` and other columns from ``fields``), admitted as the scheduler does: an input
    off ``local`` has its stage-in requested. Returns the job's id."""
    jid = uuid.uuid4()
    fields.setdefault("inputs", {"grid": dataset})
    async with sessions() as session, session.begin():
        session.add(
            Dataset(
                id=uuid.uuid4(),
                tenant_id=tenant_id,
                name=dataset,
                size=8,
                checksum="xxh3-128:00",
                tier=tiers[0],
                tiers=tiers,
            )
        )
        session.add(new_job(tenant_id, id=jid, **fields))
    async with sessions() as session, session.begin():
        await admit_jobs(session=session, job_ids=[jid], tiers=["local", "archive", "s3"])
    return jid


async def admit_jobs(
    *, session: AsyncSession, job_ids: Iterable[uuid.UUID], tiers: list[str] | None = None
) -> int:
    """Admit the PENDING jobs of ``job_ids`` as the dispatch pass does (``admit_pending``,
    then the stage-ins of their inputs), in ``session``'s transaction; returns how many were
    admitted. The test's database holds no other PENDING job (checked)."""
    wanted = set(job_ids)
    admitted = await admit_pending(session_fetch(session), limit=len(wanted))
    assert {a.job_id for a in admitted} <= wanted, "another PENDING job in the test's database"
    for job in admitted:
        if job.inputs:
            await request_stage_ins(session=session, admitted=job, tiers=tiers or ["local"])
    return len(admitted)


async def migrations_for_job(*, session: AsyncSession, job_id: uuid.UUID) -> list[Migration]:
    """The stage-in migrations requested for a job, oldest first."""
    rows = await session.execute(
        select(Migration).where(Migration.job_id == job_id).order_by(Migration.created_at)
    )
    return list(rows.scalars())
