"""Stage-in: a job's input datasets are copied to the ``local`` tier before it may run.

The scheduler requests the copies when it admits a job (``request_stage_ins``); the datamover
runs them as any other migration and its ``migration.finished`` event wakes the scheduler.
Whether a job still waits for its inputs is part of the one "runnable now" rule, which is SQL
(``staging_in`` and ``stage_in_failed`` here, composed in ``services.scheduler.runnable``) so
that the dispatch pass and the autoscaler's demand apply it in their own statements.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Job, Migration
from shared.errors import NotFound
from shared.jobs.proposals import Failed
from shared.jobs.store import Admitted, session_fetch, set_job_state
from shared.storage.catalog import get_dataset
from shared.storage.migrations import MigrationMode, MigrationState, request_migration

STAGE_TIER = "local"  # where a job's inputs must be for a worker to read them
_FAILED = MigrationState.FAILED.value


def _missing(job: str) -> str:
    """The inputs of the ``jobs`` row ``job`` (an alias of the enclosing statement) that are
    not on the stage tier: a correlated set whose emptiness the conditions below test."""
    return f"""
        SELECT i.value AS dataset FROM jsonb_each_text({job}.inputs) AS i
        WHERE NOT EXISTS (
            SELECT 1 FROM datasets d
            WHERE d.tenant_id = {job}.tenant_id AND d.name = i.value AND d.tiers ? '{STAGE_TIER}'
        )"""  # noqa: S608 (``job`` is an alias in the caller's constant SQL)


def _failed(job: str) -> str:
    return f"""EXISTS (
        SELECT 1 FROM ({_missing(job)}) AS m JOIN migrations g
          ON g.job_id = {job}.id AND g.dataset = m.dataset AND g.state = '{_FAILED}'
    )"""  # noqa: S608 (``job`` is an alias in the caller's constant SQL)


def staging_in(job: str) -> str:
    """SQL: some input of the ``jobs`` row ``job`` is not on the stage tier yet and none of
    the missing ones' stage-ins failed, so the job neither runs nor fails (a job without
    inputs skips the subqueries)."""
    return f"({job}.inputs <> '{{}}'::jsonb AND EXISTS ({_missing(job)}) AND NOT {_failed(job)})"


def stage_in_failed(job: str) -> str:
    """SQL: the stage-in of some missing input of the ``jobs`` row ``job`` failed: the job
    cannot run, and the dispatch pass fails it (``fail_stage_in``)."""
    return f"({job}.inputs <> '{{}}'::jsonb AND {_failed(job)})"


# The errors of the failed stage-ins of the inputs that are still missing. $1: the job.
_ERRORS = f"""
SELECT g.dataset, g.error FROM jobs j
CROSS JOIN LATERAL ({_missing("j")}) AS m
JOIN migrations g ON g.job_id = j.id AND g.dataset = m.dataset AND g.state = '{_FAILED}'
WHERE j.id = $1
ORDER BY g.dataset
"""  # noqa: S608 (built from constants only)


async def request_stage_in(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    dataset: str,
    tiers: Collection[str],
) -> Migration | None:
    """Ask for ``dataset`` to be copied to the stage tier for ``job_id`` (idempotent per job
    and dataset). ``None`` when it is there already; ``NotFound`` when it no longer exists."""
    row = await get_dataset(session=session, tenant_id=tenant_id, name=dataset)
    if row is not None and STAGE_TIER in row.tiers:
        return None
    requested = await request_migration(
        session=session,
        tenant_id=tenant_id,
        dataset=dataset,
        to_tier=STAGE_TIER,
        mode=MigrationMode.COPY,
        tiers=tiers,
        idempotency_key=f"stage-in:{job_id}:{dataset}"[:255],
        job_id=job_id,
    )
    return requested.migration


async def request_stage_ins(
    *, session: AsyncSession, admitted: Admitted, tiers: Collection[str]
) -> None:
    """Request the stage-in of each input of a job just admitted that is not on the stage
    tier; the job says which it waits for. An input that no longer exists fails the job, and
    so does a pinned one whose dataset holds other bytes than its pin (before it runs)."""
    for key, pin in sorted(admitted.pins.items()):
        name = admitted.inputs.get(key)
        row = (
            None
            if name is None
            else await get_dataset(session=session, tenant_id=admitted.tenant_id, name=name)
        )
        if row is None or row.checksum != pin:
            found = "does not exist" if row is None else f"has checksum {row.checksum!r}"
            error = f"pinned input {key!r}: dataset {name!r} {found}, pinned {pin!r}"
            await set_job_state(session, admitted.job_id, Failed(error))
            return
    staging: list[str] = []
    for name in sorted(set(admitted.inputs.values())):
        try:
            migration = await request_stage_in(
                session=session,
                tenant_id=admitted.tenant_id,
                job_id=admitted.job_id,
                dataset=name,
                tiers=tiers,
            )
        except NotFound:
            await set_job_state(
                session, admitted.job_id, Failed(f"input dataset {name!r} no longer exists")
            )
            return
        if migration is not None:
            staging.append(name)
    if staging:
        await session.execute(
            update(Job)
            .where(Job.id == admitted.job_id)
            .values(state_reason=f"staging in: {', '.join(staging)}")
        )


async def fail_stage_in(*, session: AsyncSession, job_id: uuid.UUID) -> None:
    """Fail a job whose stage-in failed (``stage_in_failed``), with the migrations' errors."""
    rows = await session_fetch(session)(_ERRORS, job_id)
    errors = "; ".join(f"{name}: {error}" for name, error in rows)
    await set_job_state(session, job_id, Failed(f"stage-in failed: {errors}"))
