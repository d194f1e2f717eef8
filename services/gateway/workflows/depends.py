"""``depends_on`` on ``POST /v1/jobs``: a job or an array that waits on others is written in
a transaction of its own (not the group commit), with its dependencies locked, so that a
dependency finishing meanwhile never strands it (``shared.jobs.deps``). Under the tenant's
submission lock, it counts toward ``max_queued_jobs`` once its dependencies settled at
submission are settled: a job that is ready at once as any job, one that still waits
against a bound of its own of the same size (``check_rooms``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson

from services.gateway.jobs.schemas import ArraySpec
from services.gateway.jobs.writer import (
    INSERT_ARRAY,
    INSERT_JOBS,
    WRITTEN,
    WRITTEN_ARRAY,
    NewJob,
    arguments,
)
from shared.errors import TooManyRequests
from shared.jobs import deps

# What the answer reads back: the release at submission may have settled the job already.
_STATE = "SELECT state, state_reason, finished_at FROM jobs WHERE id = $1"
# The tenant's submission lock, the one ``jobs_waiting_room`` takes (migration 0011): taken
# first, so that the count after the insert sees every other submission of the tenant.
_LOCK = "SELECT pg_advisory_xact_lock(1364284535, hashtext($1::uuid::text))"
# The tenant's ready jobs (``jobs_waiting``, counted up to twice ``max_queued_jobs`` $2) and
# its jobs that wait on dependencies (``jobs_held``, migration 0026), this transaction's rows
# counted.
_COUNTS = """
SELECT jobs_waiting($1::uuid, 2 * $2::int4 + 1) AS ready,
       $2::int4 - jobs_held_room($1::uuid, $2::int4) AS held
"""
# What the rows ``$1`` (a submission's) added to each count: the ready ones and those that
# wait, each element of an array once; a job the submission's settling ended adds nothing.
_ADDED = """
SELECT coalesce(sum(n) FILTER (WHERE deps_left = 0), 0)::int AS ready,
       coalesce(sum(n) FILTER (WHERE deps_left > 0), 0)::int AS held
FROM (
    SELECT j.deps_left,
           CASE WHEN j.is_array THEN a.n_pending + a.n_queued + a.n_running ELSE 1 END AS n
    FROM jobs j LEFT JOIN job_arrays a ON a.job_id = j.id
    WHERE j.id = ANY($1::uuid[]) AND j.state IN ('PENDING', 'QUEUED', 'RUNNING')
) added
"""


def _quota(
    job: NewJob, room: int | None = None, size: int = 1, *, held: bool = False
) -> TooManyRequests:
    what = "max_queued_jobs" + (" of jobs waiting on dependencies" if held else "")
    if size == 1:
        detail = f"{what} ({job.max_queued}) reached; retry later"
    else:
        detail = (
            f"{what} ({job.max_queued}) has room for {max(room or 0, 0)} more jobs; "
            f"the array's {size} elements are a job each. Retry later"
        )
    return TooManyRequests(detail, retry_after=5)


async def lock_tenant(conn: Any, tenant_id: Any, quota: int | None) -> None:
    """Take the tenant's submission lock when it has a ``max_queued_jobs``."""
    if quota is not None:
        await conn.execute(_LOCK, tenant_id)


async def check_rooms(conn: Any, job: NewJob, ids: Sequence[Any], size: int = 1) -> None:
    """429 when the rows ``ids`` just written (a job, an array, a workflow's steps; ``job``
    gives the tenant and its quota ``q``) took the tenant past its bounds: ready rows need
    the ready jobs (dependencies settled) within ``q``; rows that wait on dependencies need
    those that wait within ``q`` and all of them within ``2 q``. A release moves jobs from
    waiting to ready (past ``q``, never refused) and adds none, so a tenant never holds
    more than ``2 q``, and a pipeline of waiting steps is not refused for a full queue.
    The caller holds the tenant's lock (``lock_tenant``) and rolls the rows back."""
    q = job.max_queued
    if q is None:
        return
    added = await conn.fetchrow(_ADDED, list(ids))
    ready, held = await conn.fetchrow(_COUNTS, job.row["tenant_id"], q)
    if added["ready"] and ready > q:
        raise _quota(job, q - ready + size, size)
    if added["held"] and (held > q or ready + held > 2 * q):
        raise _quota(job, min(q - held, 2 * q - ready - held) + size, size, held=True)


async def insert_row(conn: Any, job: NewJob, array: ArraySpec | None) -> bool:
    """``job``'s row (and an array's ``job_arrays`` row) by the writer's own statements, in
    the caller's transaction; ``False`` when its idempotency key is taken, 429 without room
    in the tenant's queue."""
    if array is None:
        found = await conn.fetch(INSERT_JOBS, *arguments(WRITTEN, [job]))
        if any(not r["inserted"] for r in found):
            raise _quota(job)
        return bool(found)
    overrides = None if array.overrides is None else orjson.dumps(array.overrides).decode()
    row = await conn.fetchrow(
        INSERT_ARRAY,
        *WRITTEN_ARRAY.arguments([job.row]),
        job.row["tenant_id"],
        job.max_queued,
        array.size,
        array.index_param,
        array.max_concurrent,
        overrides,
    )
    if row["id"] is None and row["room"] is not None and row["room"] < array.size:
        raise _quota(job, row["room"], array.size)
    return row["id"] is not None


async def write_dependent(
    *, db: Any, job: NewJob, array: ArraySpec | None, depends_on: Sequence[deps.Dependency]
) -> bool:
    """Lock the dependencies (422 for one that is no job of the tenant's or whose condition
    does not fit), insert the job PENDING ("dependency") with its edges, and settle at once
    what is settled already; ``job.row`` is updated to what was written. ``False`` when the
    idempotency key is taken (nothing written)."""
    tenant_id = job.row["tenant_id"]
    async with db.raw() as conn, conn.transaction():
        await lock_tenant(conn, tenant_id, job.max_queued)
        targets = await deps.lock_targets(
            conn, tenant_id=tenant_id, refs=[d["job"] for d in depends_on]
        )
        deps.check_conditions(
            [d["condition"] for d in depends_on],
            targets,
            size=None if array is None else array.size,
            max_concurrent=None if array is None else array.max_concurrent,
        )
        # counted once its edges are settled: against the ready jobs or the waiting ones
        if not await insert_row(conn, replace(job, max_queued=None), array):
            return False
        edges = [
            deps.Edge(job.id, t, d["condition"]) for d, t in zip(depends_on, targets, strict=True)
        ]
        await deps.attach(conn, edges)
        await check_rooms(conn, job, [job.id], 1 if array is None else array.size)
        state = await conn.fetchrow(_STATE, job.id)
    job.row.update(dict(state))
    return True
