"""The worker's per-job writes as group commits on plain asyncpg.

Every job costs the worker two writes: its claim (QUEUED -> RUNNING, which must be durable
before the dispatch is acknowledged) and its record (the outcome, the attempt's usage row
and the scheduler's wake-up, a NOTIFY). Each is one fixed statement of ``shared.jobs.store`` on the
asyncpg connection under the pool (``shared.db.raw``), in autocommit: the statement is its
own transaction, with none of a SQLAlchemy session's statement building on the way. And the
claims (or records) that wait while one statement is in flight go together in the next one,
so that under load one round trip serves several jobs: a ``shared.db.batch.GroupCommit``
without a timer (an idle worker writes at once), one item per job in a batch. A
connectivity error fails the batch (each caller retries as it would alone); any other error
re-runs the items one by one.

Claims and records share one group commit (``Writes``): a slot that frees as its kernel ends
takes the next dispatch at once, so one job's record and the next job's claim are submitted
in the same turn of the event loop, and they commit together, in one statement
(``shared.jobs.store.record_and_claim``: one round trip, where a transaction of the two
statements took four with its BEGIN and COMMIT), instead of one transaction and one pool
checkout each. Each of its UPDATEs locks its rows in id order, as alone.

What a statement does not apply (a duplicate dispatch, a superseded attempt, a job cancelled
meanwhile, a failure with retry rules) takes the general path of ``services.worker.service``
in a session of its own: see ``Claims.claim`` and ``WorkerRuntime._write_record``.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.worker import service
from shared.db.batch import GroupCommit
from shared.db.engine import transaction
from shared.db.raw import raw_connection
from shared.jobs.store import Claim, Finish, claim_queued, finish_attempts, record_and_claim


class Writes:
    """A worker's claims (a job id: ``Claim | None``) and records (a ``Finish``: whether the
    statement applied it) in one group commit: whatever waits goes into the next write, the
    claims in one ``claim_queued`` statement and the records in one ``finish_attempts``
    statement, in one statement when there are both (``record_and_claim``)."""

    def __init__(self, engine: AsyncEngine, *, worker: str, lease_s: float) -> None:
        self.engine = engine
        self.worker = worker
        self.lease_s = lease_s
        # a job's claim and its record never wait together (the record follows the claim's
        # commit); the key keeps a duplicate dispatch's claim for the next write
        self.commits: GroupCommit[uuid.UUID | Finish, Any] = GroupCommit(
            "worker-writes", self._write, key=_job_of
        )

    async def _write(self, items: list[uuid.UUID | Finish]) -> list[Any]:
        job_ids = [i for i in items if isinstance(i, uuid.UUID)]
        finishes = [i for i in items if isinstance(i, Finish)]
        claimed: dict[uuid.UUID, Claim] = {}
        left: list[Finish] = []
        async with raw_connection(self.engine) as conn:
            if job_ids and finishes:
                claimed, left = await record_and_claim(
                    conn.fetch, finishes, job_ids, worker=self.worker, lease_s=self.lease_s
                )
            elif job_ids:
                claimed = await self._claim(conn, job_ids)
            else:
                left = await finish_attempts(conn.fetch, finishes, worker=self.worker)
        not_applied = {finish.job_id for finish in left}
        return [
            claimed.get(item) if isinstance(item, uuid.UUID) else item.job_id not in not_applied
            for item in items
        ]

    async def _claim(self, conn: Any, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, Claim]:
        return await claim_queued(conn.fetch, job_ids, worker=self.worker, lease_s=self.lease_s)


def _job_of(item: uuid.UUID | Finish) -> uuid.UUID:
    return item if isinstance(item, uuid.UUID) else item.job_id


class Claims:
    """A worker's claims: ``claim_queued`` for the waiting dispatches together (in the
    ``Writes`` it shares with the records), then the general path for a job it did not
    match."""

    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        *,
        worker: str,
        lease_s: float,
        writes: Writes | None = None,
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.worker = worker
        self.lease_s = lease_s
        self.writes = writes or Writes(engine, worker=worker, lease_s=lease_s)

    @property
    def commits(self) -> GroupCommit[uuid.UUID | Finish, Any]:
        return self.writes.commits

    async def claim(self, job_id: uuid.UUID) -> Claim | None:
        """QUEUED -> RUNNING, committed when this returns; None when the job is not ours to
        run (taken, cancelled, finished: a duplicate dispatch)."""
        claim: Claim | None = await self.commits.submit(job_id)
        if claim is not None:
            return claim
        async with transaction(self.sessions) as session:  # not QUEUED: the rules say why
            return await service.claim(
                session=session, job_id=job_id, worker=self.worker, lease_s=self.lease_s
            )


class Records:
    """A worker's records of outcomes with nothing to publish: ``finish_attempts`` for the
    waiting ones together (in the ``Writes`` it shares with the claims). ``record`` says
    whether the statement applied the outcome; when it did not, the caller takes the general
    path."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        worker: str,
        lease_s: float = 30.0,
        writes: Writes | None = None,
    ) -> None:
        self.engine = engine
        self.worker = worker
        self.writes = writes or Writes(engine, worker=worker, lease_s=lease_s)

    @property
    def commits(self) -> GroupCommit[uuid.UUID | Finish, Any]:
        return self.writes.commits

    async def record(self, finish: Finish) -> bool:
        applied: bool = await self.commits.submit(finish)
        return applied
