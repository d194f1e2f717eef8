"""``depends_on`` on ``POST /v1/jobs``: a job or an array that waits on others is written in
a transaction of its own (not the group commit), with its dependencies locked, so that a
dependency finishing meanwhile never strands it (``shared.jobs.deps``)."""

from __future__ import annotations

from collections.abc import Sequence
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


def _quota(job: NewJob, room: int | None = None, size: int = 1) -> TooManyRequests:
    if size == 1:
        detail = f"max_queued_jobs ({job.max_queued}) reached; retry later"
    else:
        detail = (
            f"max_queued_jobs ({job.max_queued}) has room for {max(room or 0, 0)} more jobs; "
            f"the array's {size} elements are a job each. Retry later"
        )
    return TooManyRequests(detail, retry_after=5)


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
        targets = await deps.lock_targets(
            conn, tenant_id=tenant_id, refs=[d["job"] for d in depends_on]
        )
        deps.check_conditions(
            [d["condition"] for d in depends_on],
            targets,
            size=None if array is None else array.size,
            max_concurrent=None if array is None else array.max_concurrent,
        )
        if not await insert_row(conn, job, array):
            return False
        edges = [
            deps.Edge(job.id, t, d["condition"]) for d, t in zip(depends_on, targets, strict=True)
        ]
        await deps.attach(conn, edges)
        state = await conn.fetchrow(_STATE, job.id)
    job.row.update(dict(state))
    return True
