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

What a statement does not apply (a duplicate dispatch, a superseded attempt, a job cancelled
meanwhile, a failure with retry rules) takes the general path of ``services.worker.service``
in a session of its own: see ``Claims.claim`` and ``WorkerRuntime._write_record``.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.worker import service
from shared.db.batch import GroupCommit
from shared.db.engine import transaction
from shared.db.raw import raw_connection
from shared.jobs.store import Claim, Finish, claim_queued, finish_attempts


class Claims:
    """A worker's claims: ``claim_queued`` for the waiting dispatches together, then the
    general path for a job it did not match."""

    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        *,
        worker: str,
        lease_s: float,
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.worker = worker
        self.lease_s = lease_s
        self.commits: GroupCommit[uuid.UUID, Claim | None] = GroupCommit(
            "claims", self._write, key=lambda job_id: job_id
        )

    async def _write(self, job_ids: list[uuid.UUID]) -> list[Claim | None]:
        async with raw_connection(self.engine) as conn:
            claimed = await claim_queued(
                conn.fetch, job_ids, worker=self.worker, lease_s=self.lease_s
            )
        return [claimed.get(job_id) for job_id in job_ids]

    async def claim(self, job_id: uuid.UUID) -> Claim | None:
        """QUEUED -> RUNNING, committed when this returns; None when the job is not ours to
        run (taken, cancelled, finished: a duplicate dispatch)."""
        claim = await self.commits.submit(job_id)
        if claim is not None:
            return claim
        async with transaction(self.sessions) as session:  # not QUEUED: the rules say why
            return await service.claim(
                session=session, job_id=job_id, worker=self.worker, lease_s=self.lease_s
            )


class Records:
    """A worker's records of outcomes with nothing to publish: ``finish_attempts`` for the
    waiting ones together. ``record`` says whether the statement applied the outcome; when
    it did not, the caller takes the general path."""

    def __init__(self, engine: AsyncEngine, *, worker: str) -> None:
        self.engine = engine
        self.worker = worker
        self.commits: GroupCommit[Finish, bool] = GroupCommit(
            "records", self._write, key=lambda finish: finish.job_id
        )

    async def _write(self, finishes: list[Finish]) -> list[bool]:
        async with raw_connection(self.engine) as conn:
            left = await finish_attempts(conn.fetch, finishes, worker=self.worker)
        not_applied = {finish.job_id for finish in left}
        return [finish.job_id not in not_applied for finish in finishes]

    async def record(self, finish: Finish) -> bool:
        return await self.commits.submit(finish)
