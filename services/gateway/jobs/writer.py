"""Group commit for job submissions: the rows of concurrent ``POST /v1/jobs`` requests are
written together, in one statement (and so one transaction) on a plain asyncpg connection.

Why: one transaction per submission costs a connection checkout, BEGIN, the insert and a
COMMIT (with its WAL flush) for every job, and through SQLAlchemy most of that CPU went into
session and statement machinery, not into PostgreSQL. A per-process ``JobWriter`` collects
the validated rows of the requests in flight for at most ``linger_s`` after the first one
arrived (or until ``max_rows`` are waiting) and inserts them with one ``INSERT ... SELECT
FROM unnest(...)``, their ``job.submitted`` outbox rows in the same statement: one commit.
Rows that arrive while a batch is being written form the next batch, so under load batches
grow by themselves and an idle gateway waits at most ``linger_s``. The batching itself is
``shared.db.batch.GroupCommit``; what is the gateway's own here is the statement, the
idempotency keys and the 503s.

What a caller can rely on (the rest is ``GroupCommit``'s):

- ``write`` returns only after COMMIT: a 201 is sent for a durable row only, nothing
  accepted is lost. ``True``: the row was inserted; ``False``: its ``(tenant_id,
  idempotency_key)`` was already taken (by an earlier job, or by another row of the same
  batch, which is left out of the statement: one job per key), and the caller looks the
  holder up as it did before group commit.
- ``max_queued_jobs`` is exact under any concurrency: the statement takes each tenant's
  submission lock (``jobs_waiting_room``, migration 0011) and counts its waiting jobs after
  the lock is granted, so batches of one tenant, from any number of gateways, take their
  places in its queue one after the other; a row beyond the room left is not inserted and
  its ``write`` raises ``TooManyRequests`` (429). The lock is held for the statement only (its
  own transaction), and tenants' locks are taken in id order, so batches cannot deadlock.
- A connectivity failure (or an open circuit, or an exhausted pool) fails every request of
  the batch with the same 503 as a session would give; nothing of the batch was written (one
  transaction). Any other error retries the batch's rows one transaction each, so that one
  bad row fails only its own request.
- A request cancelled before its batch is written (client gone) is left out; one cancelled
  while its batch is written does not disturb the batch (the writer task owns the
  transaction, never the request), its row is simply committed unanswered, as a single
  request's could be.
- After ``stop`` (the lifespan's end, which writes what waits first) a write is a 503.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.exc import TimeoutError as PoolTimeout

from shared.db.batch import GroupCommit
from shared.errors import DependencyUnavailable, TooManyRequests
from shared.resilience import CircuitOpen


@dataclass(slots=True)
class NewJob:
    """A validated submission ready to insert: the job row and its ``job.submitted`` event."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    kernel: str
    device: str
    params: dict[str, Any]
    inputs: dict[str, str]
    outputs: dict[str, str]
    output_tier: str
    labels: dict[str, str]
    priority: int
    timeout_s: int
    max_retries: int
    idempotency_key: str | None
    created_at: datetime
    message_id: uuid.UUID
    routing_key: str
    event_body: bytes
    # the tenant's max_queued_jobs (None: no limit)
    max_queued: int | None = None
    # the body's fingerprint, kept with an idempotency key (``shared.idempotency``)
    request_hash: str | None = None


# Every row of the batch in one statement: the room each limited tenant has left in its queue
# (under its submission lock, taken in tenant order), the rows that fit it and do not collide
# with a taken key, then the outbox rows of exactly the jobs inserted (joined on the ids the
# insert returned). The rows of one tenant take the room in the order of the batch. The answer
# names each row inserted (true) or refused for the quota (false). JSON goes in as text and is
# cast, so no codec of the pooled connection is involved.
INSERT_JOBS = """
WITH room AS (
    SELECT q.tenant_id, jobs_waiting_room(q.tenant_id, q.quota) AS room
    FROM (
        SELECT tenant_id, min(quota) AS quota
        FROM unnest($2::uuid[], $18::int4[]) AS l(tenant_id, quota)
        WHERE quota IS NOT NULL
        GROUP BY tenant_id
        ORDER BY tenant_id
    ) q
), r AS (
    SELECT r.*, row_number() OVER (PARTITION BY r.tenant_id ORDER BY r.ord) AS place,
           room.room
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::int2[], $11::int4[], $12::int4[],
                $13::text[], $14::timestamptz[], $19::text[]) WITH ORDINALITY
         AS r(id, tenant_id, kernel, device, params, inputs, outputs, output_tier, labels,
              priority, timeout_s, max_retries, idempotency_key, created_at, request_hash, ord)
    LEFT JOIN room ON room.tenant_id = r.tenant_id
), new AS (
    INSERT INTO jobs (id, tenant_id, kernel, device, params, inputs, outputs, output_tier,
                      labels, priority, timeout_s, max_retries, state, attempts,
                      idempotency_key, request_hash, created_at, updated_at)
    SELECT r.id, r.tenant_id, r.kernel, r.device, CAST(r.params AS jsonb),
           CAST(r.inputs AS jsonb), CAST(r.outputs AS jsonb), r.output_tier,
           CAST(r.labels AS jsonb), r.priority, r.timeout_s, r.max_retries, 'PENDING', 0,
           r.idempotency_key, r.request_hash, r.created_at, r.created_at
    FROM r
    WHERE r.room IS NULL OR r.place <= r.room
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    RETURNING id
), events AS (
    INSERT INTO outbox (message_id, routing_key, body)
    SELECT e.message_id, e.routing_key, e.body
    FROM unnest($1::uuid[], $15::uuid[], $16::text[], $17::bytea[])
         AS e(job_id, message_id, routing_key, body)
    JOIN new ON new.id = e.job_id
)
SELECT id, true FROM new
UNION ALL
SELECT id, false FROM r WHERE r.place > r.room
"""


def _arguments(jobs: list[NewJob]) -> list[list[Any]]:
    dumps = orjson.dumps
    return [
        [j.id for j in jobs],
        [j.tenant_id for j in jobs],
        [j.kernel for j in jobs],
        [j.device for j in jobs],
        [dumps(j.params).decode() for j in jobs],
        [dumps(j.inputs).decode() for j in jobs],
        [dumps(j.outputs).decode() for j in jobs],
        [j.output_tier for j in jobs],
        [dumps(j.labels).decode() for j in jobs],
        [j.priority for j in jobs],
        [j.timeout_s for j in jobs],
        [j.max_retries for j in jobs],
        [j.idempotency_key for j in jobs],
        [j.created_at for j in jobs],
        [j.message_id for j in jobs],
        [j.routing_key for j in jobs],
        [j.event_body for j in jobs],
        [j.max_queued for j in jobs],
        [j.request_hash for j in jobs],
    ]


def _fails_the_batch(exc: BaseException) -> bool:
    """Errors about the database, not about a row: retrying rows one by one cannot help.
    (``raw_db`` has already turned a connectivity error into a ``DependencyUnavailable``.)"""
    return isinstance(exc, DependencyUnavailable | CircuitOpen | PoolTimeout)


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
        self.commits: GroupCommit[NewJob, bool | None] = GroupCommit(
            "jobs",
            self._insert,
            max_batch=max_rows,
            linger_s=linger_s,
            fails_batch=_fails_the_batch,
            on_commit=on_commit,
            closed=_shutting_down,
        )

    @property
    def max_rows(self) -> int:
        return self.commits.max_batch

    @max_rows.setter
    def max_rows(self, value: int) -> None:
        self.commits.max_batch = value

    @property
    def linger_s(self) -> float:
        return self.commits.linger_s

    @linger_s.setter
    def linger_s(self, value: float) -> None:
        self.commits.linger_s = value

    @property
    def batches(self) -> int:
        """Statements committed (statistics, for tests and curiosity)."""
        return self.commits.writes

    @property
    def rows(self) -> int:
        """Rows those statements answered."""
        return self.commits.items

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

    async def _insert(self, jobs: list[NewJob]) -> list[bool | None]:
        """One transaction; for each job whether it was inserted, ``None`` when its tenant's
        queue had no room for it. Of several rows with the same (tenant, key) only the first
        goes into the statement: the others are answered ``False``, like a row whose key
        another request took."""
        rows = jobs
        if any(j.idempotency_key is not None for j in jobs):
            seen: set[tuple[uuid.UUID, str]] = set()
            unique = []
            for j in jobs:
                if j.idempotency_key is not None:
                    key = (j.tenant_id, j.idempotency_key)
                    if key in seen:
                        continue
                    seen.add(key)
                unique.append(j)
            # A fixed order of keyed rows: two gateways' batches wait on each other's keys in
            # the same order instead of deadlocking.
            rows = sorted(unique, key=lambda j: (str(j.tenant_id), j.idempotency_key or ""))
        # One statement is one transaction of its own (the connection is in autocommit):
        # no BEGIN/COMMIT round trips; the jobs and outbox rows commit together or not at all.
        async with self.connect() as conn:
            found = await conn.fetch(INSERT_JOBS, *_arguments(rows))
        answered: dict[uuid.UUID, bool] = {row[0]: row[1] for row in found}
        return [None if answered.get(j.id) is False else j.id in answered for j in jobs]
