"""Group commit for job submissions (``shared.db.batch.GroupCommit`` does the batching): the
rows of concurrent ``POST /v1/jobs`` requests go in one statement on a plain asyncpg
connection, one commit, which wakes the scheduler with one NOTIFY (``shared.db.wakeup``:
no outbox row, no broker message).

What is the gateway's own here:

- the statement: it takes each limited tenant's submission lock (``jobs_waiting_room``, in
  tenant order, so that batches cannot deadlock) and counts its waiting jobs under it, so
  ``max_queued_jobs`` is exact across gateways; a row beyond the room left is refused (429).
- idempotency keys: of the rows of a batch with one ``(tenant_id, idempotency_key)`` only the
  first is written; ``write`` answers ``False`` for a key already taken, and the caller
  looks its holder up.
- 503s: a connectivity failure, an open circuit or an exhausted pool fails every request of
  the batch (nothing of it was written), as does a write after ``stop``.

An array (``write_array``) is one request with one row however many elements it has: its
``jobs`` row and its ``job_arrays`` row go in one statement of their own (one NOTIFY), which
takes the array's places in the queue (one per element) under the same lock and count.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel
from sqlalchemy import Table
from sqlalchemy.exc import TimeoutError as PoolTimeout

from services.gateway.jobs.schemas import ArraySpec, JobSubmit
from shared.db.batch import GroupCommit
from shared.db.wakeup import SUBMITTED, notify_once
from shared.errors import DependencyUnavailable, TooManyRequests
from shared.jobs.row import JOBS, Columns, stored
from shared.resilience import CircuitOpen

# The columns the gateway sets itself; the columns named like a field of ``JobSubmit`` are
# stored as the request gives them, the others keep their defaults.
SET_BY_GATEWAY = (
    "id",
    "tenant_id",
    "state",
    "attempts",
    "checkpoints",
    "preemptions",
    "idempotency_key",
    "request_hash",
    "created_at",
    "updated_at",
    "queued_at",
    "state_reason",
)


def written_columns(submit: type[BaseModel], table: Table = JOBS) -> Columns:
    """What a submission writes: ``SET_BY_GATEWAY``, then the fields of ``submit`` that are
    columns of ``table``."""
    return Columns((*SET_BY_GATEWAY, *stored(submit.model_fields, table)), table=table)


WRITTEN = written_columns(JobSubmit)
FROM_REQUEST = WRITTEN.fields[len(SET_BY_GATEWAY) :]


@dataclass(slots=True)
class NewJob:
    """A validated submission ready to insert: the job's row (``WRITTEN``'s columns by
    name)."""

    row: dict[str, Any]
    # the tenant's max_queued_jobs (None: no limit)
    max_queued: int | None = None

    @property
    def id(self) -> uuid.UUID:
        job_id: uuid.UUID = self.row["id"]
        return job_id

    @property
    def key(self) -> tuple[uuid.UUID, str] | None:
        """``(tenant_id, idempotency_key)``, or None for a submission without a key."""
        key: str | None = self.row["idempotency_key"]
        return None if key is None else (self.row["tenant_id"], key)


def insert_statement(written: Columns) -> str:
    """Every row of a batch in one statement: the room each limited tenant has left in its
    queue (under its submission lock, taken in tenant order), the rows that fit it and do not
    collide with a taken key, then one NOTIFY for the scheduler if any row was inserted. The
    rows of one tenant take the room in the order of the batch. The answer names each row
    inserted (true) or refused for the quota (false).

    Parameters: ``written``'s columns, then each row's ``max_queued``."""
    n = len(written.fields)
    tenant_id = written.parameter("tenant_id")
    return f"""
WITH room AS (
    SELECT q.tenant_id, jobs_waiting_room(q.tenant_id, q.quota) AS room
    FROM (
        SELECT tenant_id, min(quota) AS quota
        FROM unnest({tenant_id}::uuid[], ${n + 1}::int4[]) AS l(tenant_id, quota)
        WHERE quota IS NOT NULL
        GROUP BY tenant_id
        ORDER BY tenant_id
    ) q
), r AS (
    SELECT r.*, row_number() OVER (PARTITION BY r.tenant_id ORDER BY r.ord) AS place,
           room.room
    FROM {written.unnest()} WITH ORDINALITY AS r({written.names()}, ord)
    LEFT JOIN room ON room.tenant_id = r.tenant_id
), new AS (
    INSERT INTO jobs ({written.names()})
    SELECT {written.values("r")}
    FROM r
    WHERE r.room IS NULL OR r.place <= r.room
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    RETURNING id
), woke AS MATERIALIZED (
    {notify_once("new", SUBMITTED)}
)
SELECT id, true AS inserted FROM new, woke
UNION ALL
SELECT id, false FROM r WHERE r.place > r.room
"""  # noqa: S608 (column names of the model only)


INSERT_JOBS = insert_statement(WRITTEN)

# An array's own row: what a job's submission writes, and ``is_array``.
WRITTEN_ARRAY = Columns((*WRITTEN.fields, "is_array"))


def array_statement(written: Columns) -> str:
    """One array: the room left in its tenant's queue (under the submission lock; no limit
    when the quota parameter is null), its ``jobs`` row when all its elements fit and its
    key is free, then its ``job_arrays`` row (every element pending) and one NOTIFY for the
    scheduler if it was inserted. The answer: the room, and the id inserted (null: none).

    Parameters: ``written``'s columns (arrays of one), then the tenant, its
    ``max_queued_jobs``, the size, ``index_param``, ``max_concurrent`` and the overrides
    (JSON text)."""
    n = len(written.fields)
    names = ("tenant", "quota", "size", "index_param", "max_concurrent", "overrides")
    p = {name: f"${n + i}" for i, name in enumerate(names, start=1)}
    return f"""
WITH room AS (
    SELECT CASE WHEN {p["quota"]}::int4 IS NULL THEN NULL
                ELSE jobs_waiting_room({p["tenant"]}::uuid, {p["quota"]}::int4) END AS room
), new AS (
    INSERT INTO jobs ({written.names()})
    SELECT {written.values("r")}
    FROM {written.unnest()} AS r({written.names()}), room
    WHERE room.room IS NULL OR room.room >= {p["size"]}::int4
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    RETURNING id, tenant_id
), arrays AS (
    INSERT INTO job_arrays (job_id, tenant_id, size, index_param, max_concurrent, overrides,
                            next_index, cancelled, n_pending, n_queued, n_running,
                            n_succeeded, n_failed, n_cancelled, n_timed_out)
    SELECT new.id, new.tenant_id, {p["size"]}::int4, {p["index_param"]}::text,
           {p["max_concurrent"]}::int4, CAST({p["overrides"]}::text AS jsonb),
           0, false, {p["size"]}::int4, 0, 0, 0, 0, 0, 0
    FROM new
), woke AS MATERIALIZED (
    {notify_once("new", SUBMITTED)}
)
SELECT (SELECT room FROM room) AS room, (SELECT id FROM new) AS id FROM woke
"""  # noqa: S608 (column names of the model only)


INSERT_ARRAY = array_statement(WRITTEN_ARRAY)


def arguments(written: Columns, jobs: list[NewJob]) -> list[Any]:
    """The parameters of ``insert_statement(written)`` for ``jobs``."""
    return [*written.arguments([j.row for j in jobs]), [j.max_queued for j in jobs]]


def _fails_the_batch(exc: BaseException) -> bool:
    """Errors about the database, not about a row: retrying rows one by one cannot help.
    (``raw_db`` has already turned a connectivity error into a ``DependencyUnavailable``.)"""
    return isinstance(exc, DependencyUnavailable | CircuitOpen | PoolTimeout)


def _one_per_key(jobs: list[NewJob]) -> list[NewJob]:
    """The rows without a key, then the first row of each ``(tenant_id, idempotency_key)``
    in key order: two gateways' batches wait on each other's keys in the same order instead
    of deadlocking."""
    plain: list[NewJob] = []
    firsts: dict[tuple[uuid.UUID, str], NewJob] = {}
    for j in jobs:
        key = j.key
        if key is None:
            plain.append(j)
        else:
            firsts.setdefault(key, j)
    if not firsts:
        return plain
    return plain + [firsts[k] for k in sorted(firsts, key=lambda k: (str(k[0]), k[1]))]


def _shutting_down() -> BaseException:
    return DependencyUnavailable("the gateway is shutting down; retry", retry_after=1)


class JobWriter:
    """One per process, stopped in the app's lifespan.

    ``connect`` opens a guarded raw connection (``services.gateway.deps.raw_db``: circuit
    breaker, connectivity errors as a 503); ``on_commit`` runs after each commit (the outbox
    relay's wake-up)."""

    def __init__(
        self,
        connect: Callable[[], AbstractAsyncContextManager[Any]],
        *,
        on_commit: Callable[[], None] | None = None,
        max_rows: int = 64,
        linger_s: float = 0.002,
    ) -> None:
        self.connect = connect
        self.on_commit = on_commit
        self.commits: GroupCommit[NewJob, bool | None] = GroupCommit(
            "jobs",
            self._insert,
            max_batch=max_rows,
            linger_s=linger_s,
            fails_batch=_fails_the_batch,
            on_commit=on_commit,
            closed=_shutting_down,
        )

    async def stop(self) -> None:
        """Write what is waiting, then end; later writes are refused with a 503."""
        await self.commits.close()

    async def write(self, job: NewJob) -> bool:
        """Insert ``job`` and its event in the next batch; ``False`` when its idempotency key
        is taken. Returns after COMMIT; raises what the write of the row raised, and
        ``TooManyRequests`` when the tenant's queue had no room left for it."""
        inserted = await self.commits.submit(job)
        if inserted is None:
            raise TooManyRequests(
                f"max_queued_jobs ({job.max_queued}) reached; retry later", retry_after=5
            )
        return inserted

    async def write_array(self, job: NewJob, array: ArraySpec) -> bool:
        """Insert an array's row (``job.row``: ``WRITTEN_ARRAY``'s columns) and its
        ``job_arrays`` row, in one statement of its own; ``False`` when its
        idempotency key is taken. ``TooManyRequests`` when the tenant's queue has fewer
        places left than the array has elements (each element is a job waiting)."""
        if self.commits.closed:
            raise _shutting_down()
        overrides = None if array.overrides is None else orjson.dumps(array.overrides).decode()
        async with self.connect() as conn:
            found = await conn.fetchrow(
                INSERT_ARRAY,
                *WRITTEN_ARRAY.arguments([job.row]),
                job.row["tenant_id"],
                job.max_queued,
                array.size,
                array.index_param,
                array.max_concurrent,
                overrides,
            )
        room, inserted = found["room"], found["id"] is not None
        if not inserted and room is not None and room < array.size:
            raise TooManyRequests(
                f"max_queued_jobs ({job.max_queued}) has room for {max(room, 0)} more jobs; "
                f"the array's {array.size} elements are a job each. Retry later",
                retry_after=5,
            )
        if inserted and self.on_commit is not None:
            self.on_commit()
        return inserted

    async def _insert(self, jobs: list[NewJob]) -> list[bool | None]:
        """One transaction; for each job whether it was inserted, ``None`` when its tenant's
        queue had no room for it. Of several rows with the same (tenant, key) only the first
        goes into the statement: the others are answered ``False``, like a row whose key
        another request took."""
        rows = _one_per_key(jobs)
        # One statement is one transaction of its own (the connection is in autocommit):
        # no BEGIN/COMMIT round trips; the jobs and outbox rows commit together or not at all.
        async with self.connect() as conn:
            found = await conn.fetch(INSERT_JOBS, *arguments(WRITTEN, rows))
        answered: dict[uuid.UUID, bool] = {row["id"]: row["inserted"] for row in found}
        return [None if answered.get(j.id) is False else j.id in answered for j in jobs]
