"""The worker's per-job writes as group commits on plain asyncpg.

Every job costs the worker two writes: its claim (QUEUED -> RUNNING, which must be durable
before the dispatch is acknowledged) and its record (the outcome, the attempt's usage row
and its ``job.finished`` event). Through a SQLAlchemy session each was a transaction of three
or more round trips, and the session's statement building and greenlet hops were the larger
part of the worker's CPU per job. Here each is one fixed statement of ``shared.jobs.store``
on the asyncpg connection under the pool (``shared.db.raw``), in autocommit: the statement is
its own transaction. And the claims (or records) that wait while one statement is in flight
go together in the next one, so that under load one round trip serves several jobs.

What a statement does not match (a duplicate dispatch, a superseded attempt, a job cancelled
meanwhile, a failure with retry rules) takes ``set_job_state``'s general path in a session
of its own: see ``Claims.claim`` and ``WorkerRuntime._record``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.worker import service
from shared.db.engine import is_connectivity_error, transaction
from shared.db.raw import raw_connection
from shared.jobs.store import Claim, Finish, claim_queued, finish_attempts
from shared.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Callers ``submit`` one item each and wait for its result; a task of its own hands the
    items waiting to ``write`` in one call (one statement, one transaction) and gives each
    caller its result. The items that come while a write is in flight make the next one: an
    idle worker writes at once (no timer), and batches grow with the load by themselves.

    At most one item per ``key`` goes into a batch (a second waits for the next); an item
    whose caller was cancelled before its batch started is dropped. When a write fails, a
    connectivity error fails each caller of the batch (each retries as it would alone); any
    other error is retried item by item, so that it reaches the one caller whose item
    caused it while the others commit."""

    def __init__(
        self,
        name: str,
        write: Callable[[list[T]], Awaitable[list[R]]],
        *,
        key: Callable[[T], Hashable],
        max_batch: int = 64,
    ) -> None:
        self.name = name
        self._write = write
        self._key = key
        self.max_batch = max_batch
        self._waiting: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self.writes = 0  # statements run, and items they carried: for tests and metrics
        self.items = 0

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain(), name=f"group-commit-{self.name}")
        return await future

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # the callers woken in the same turn of the loop join in
            while self._waiting:
                batch = self._take()
                if batch:
                    await self._write_batch(batch)
        except BaseException:
            for _, future in self._waiting:
                future.cancel()
            self._waiting.clear()
            raise
        finally:
            self._writer = None

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        later: list[tuple[T, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        while self._waiting and len(batch) < self.max_batch:
            item, future = self._waiting.popleft()
            if future.done():  # its caller was cancelled: nobody waits for it
                continue
            key = self._key(item)
            if key in keys:
                later.append((item, future))
                continue
            keys.add(key)
            batch.append((item, future))
        self._waiting.extendleft(reversed(later))
        return batch

    async def _write_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._write([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1 or is_connectivity_error(exc):
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            log.warning("group_commit_split", name=self.name, size=len(batch), error=repr(exc))
            for entry in batch:
                await self._write_batch([entry])
            return
        self.writes += 1
        self.items += len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


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
                session=session, job_id=job_id, worker=self.worker, lease_s=self.lease_s, fast=False
            )


class Records:
    """A worker's records of outcomes without retry rules and without outputs to publish:
    ``finish_attempts`` for the waiting ones together. ``record`` says whether the job took
    the outcome; when it did not, the caller asks the general path."""

    def __init__(self, engine: AsyncEngine, *, worker: str) -> None:
        self.engine = engine
        self.worker = worker
        self.commits: GroupCommit[Finish, bool] = GroupCommit(
            "records", self._write, key=lambda finish: finish.job_id
        )

    async def _write(self, finishes: list[Finish]) -> list[bool]:
        async with raw_connection(self.engine) as conn:
            done = await finish_attempts(conn.fetch, finishes, worker=self.worker)
        return [finish.job_id in done for finish in finishes]

    async def record(self, finish: Finish) -> bool:
        return await self.commits.submit(finish)
