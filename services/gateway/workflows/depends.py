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
# What is left of ``max_queued_jobs`` ($2) to the tenant's ready jobs and, apart, to its jobs
# that wait on dependencies (migration 0026), this transaction's rows counted: negative when
# they went past it.
_ROOMS = """
SELECT $2::int4 - jobs_waiting($1::uuid, $2::int4 + 1) AS ready,
       jobs_held_room($1::uuid, $2::int4) AS held
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


async def check_rooms(conn: Any, job: NewJob, size: int = 1) -> None:
    """429 when the rows just written (a job, an array, a workflow's steps; ``job`` gives the
    tenant and its quota) took the tenant past ``max_queued_jobs``: its ready jobs
    (dependencies settled) count against it, and its jobs that wait on dependencies count
    against a bound of their own of the same size (each element of an array once). The
    caller holds the tenant's lock (``lock_tenant``) and rolls the rows back."""
    if job.max_queued is None:
        return
    ready, held = await conn.fetchrow(_ROOMS, job.row["tenant_id"], job.max_queued)
    if ready < 0:
        raise _quota(job, ready + size, size)
    if held < 0:
        raise _quota(job, held + size, size, held=True)


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
        await check_rooms(conn, job, 1 if array is None else array.size)
        state = await conn.fetchrow(_STATE, job.id)
    job.row.update(dict(state))
    return True
