"""One migration from claim to a final state, in short transactions:

1. prepare: bind to the dataset as it is now; take the fast path when the target already
   holds a verified copy; else start (or find again) the partial object on the target;
2. copy and verify (``engine.Copier``), recording done chunks, ``bytes_done`` and the lease
   every ``progress_interval_s``;
3. publish under the dataset's lock: still the same version? then make the copy visible
   (rename / multipart completion), update the dataset's tiers, mark it published, and for a
   ``copy`` make it SUCCEEDED in the same transaction;
4. for a ``move``, delete the source copy (only now, after that commit), then SUCCEEDED.

Any failure before 3 leaves the source as it was and aborts the partial object: FAILED with
the reason. A kill at any point resumes from the recorded chunks (or from step 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import InternalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.datamover import service
from services.datamover.engine import Copier, CopyJob, Throttle, VerificationFailed
from services.datamover.settings import DatamoverSettings
from shared.db.engine import is_connectivity_error
from shared.db.models import Dataset, Migration
from shared.events import utcnow
from shared.logging import get_logger
from shared.resilience import RetriesExhausted
from shared.storage import Storage, Upload, object_key
from shared.storage.catalog import get_dataset, lock_name, remove_unlisted
from shared.storage.migrations import MigrationMode, MigrationState

log = get_logger(__name__)

T = TypeVar("T")


class DatasetChanged(Exception):
    """The dataset was overwritten or deleted while it was being migrated."""


class Checkpointed(Exception):
    """The datamover is stopping: the copy paused at a chunk boundary, progress recorded."""


@dataclass
class Plan:
    migration_id: uuid.UUID
    tenant_id: uuid.UUID
    dataset: str
    mode: MigrationMode
    checksum: str
    job: CopyJob | None  # None: nothing to copy (published already, or the fast path)
    finished: bool = False  # SUCCEEDED with the publication (nothing to delete afterwards)


def _tiers_after(dataset: Dataset, m: Migration) -> list[str]:
    kept = set(dataset.tiers) | {m.to_tier}
    if m.mode == MigrationMode.MOVE.value and m.from_tier != m.to_tier:
        kept.discard(m.from_tier)
    return sorted(kept)


def database_interrupted(exc: BaseException) -> bool:
    """PostgreSQL went away under the migration (restart, failover, a cut connection), as
    opposed to a fault of the migration itself."""
    if isinstance(exc, SQLAlchemyError):
        return is_connectivity_error(exc) or isinstance(exc, InternalError)
    return isinstance(exc, ConnectionRefusedError)


def describe(exc: BaseException) -> str:
    if isinstance(exc, RetriesExhausted):
        return f"storage unavailable, gave up after retries: {exc}"
    if isinstance(exc, FileNotFoundError):
        return f"source object not found: {exc}"
    if isinstance(exc, VerificationFailed | DatasetChanged):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class MigrationRunner:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        storage: Storage,
        settings: DatamoverSettings,
    ) -> None:
        self.sessions = sessions
        self.storage = storage
        self.settings = settings
        self.owner = settings.owner()
        self.policy = settings.retry_policy()
        self.stopping = asyncio.Event()  # set on shutdown: copies pause at a chunk boundary

    async def run(self, migration_id: uuid.UUID) -> None:
        """Drive one claimed migration. On shutdown (``stopping``) a copy stops at a chunk
        boundary with its progress recorded and the migration stays RUNNING; the caller then
        releases the lease (``service.release``) so that another datamover resumes it.
        Cancellation leaves it RUNNING too: the lease runs out, or this owner takes it back
        when it starts again."""
        plan: Plan | None = None
        try:
            plan = await self._prepare(migration_id)
            if plan.job is not None:
                progress = await self._copy(plan, plan.job)
                await self._publish(plan, plan.job, progress)
        except service.LeaseLost as exc:
            log.warning("migration_lease_lost", migration=str(migration_id), reason=str(exc))
            return
        except Checkpointed:
            log.info("migration_checkpointed", migration=str(migration_id))
            return
        except Exception as exc:
            if database_interrupted(exc):  # not the migration's fault: resume it
                log.warning("migration_interrupted", migration=str(migration_id), error=str(exc))
                await self._release(migration_id)
                return
            log.warning("migration_failed", migration=str(migration_id), error=describe(exc))
            await self._fail(migration_id, plan, exc)
            return
        if plan.finished:
            log.info("migration_succeeded", migration=str(migration_id))
            return
        try:
            await self._finish(plan)
        except Exception as exc:  # published already: never FAILED; retried after the lease
            log.warning("migration_finish_deferred", migration=str(migration_id), error=str(exc))

    async def _release(self, migration_id: uuid.UUID) -> None:
        """Give the lease back so the claim loop resumes the migration from its recorded
        chunks once the database answers; if it does not within a few tries, the lease runs
        out by itself."""
        delay = 0.5
        for _ in range(5):
            try:
                async with self.sessions() as session, session.begin():
                    await service.release(
                        session=session, owner=self.owner, migration_id=migration_id
                    )
                return
            except Exception:
                await asyncio.sleep(delay)
                delay *= 2

    # -- 1 ---------------------------------------------------------------------------------
    async def _prepare(self, migration_id: uuid.UUID) -> Plan:
        async with self.sessions() as session, session.begin():
            m = await service.lock_owned(
                session=session, migration_id=migration_id, owner=self.owner
            )
            dataset = await service.refresh_source(
                session=session, migration=m, chunk_bytes=self.storage.chunk_bytes
            )
            plan = Plan(m.id, m.tenant_id, m.dataset, MigrationMode(m.mode), m.checksum or "", None)
            if m.published_at is not None:
                return plan  # only the clean-up is left
            if dataset is None or dataset.checksum != m.checksum:
                raise DatasetChanged("the dataset was deleted or overwritten before the copy")
            if m.to_tier in dataset.tiers:  # a verified copy is there already
                await self._record_published(session, m, dataset)
                return plan
            saved = Upload.from_json(m.upload) if m.upload else None
            done = await service.done_chunks(session=session, migration_id=m.id)
        target = self.storage.tier(m.to_tier)
        key = object_key(m.tenant_id, m.dataset)
        upload = await self._resumable(m.to_tier, saved)
        if upload is None:
            upload = await self._call(
                m.to_tier, lambda: target.begin(key, f"migration-{m.id}", m.bytes_total)
            )
            done = {}
            async with self.sessions() as session, session.begin():
                m = await service.lock_owned(session=session, migration_id=m.id, owner=self.owner)
                await service.start_upload(session=session, migration=m, upload=upload)
        assert m.chunk_bytes is not None
        plan.job = CopyJob(m.from_tier, m.to_tier, key, m.bytes_total, m.chunk_bytes, upload, done)
        if done:
            log.info("migration_resumed", migration=str(m.id), chunks_done=len(done))
        return plan

    async def _resumable(self, tier: str, upload: Upload | None) -> Upload | None:
        """The saved partial object when the target still has it (a resume), else None."""
        if upload is None:
            return None
        found: Upload = upload
        if await self._call(tier, lambda: self.storage.tier(tier).resume(found)):
            return found
        return None

    async def _call(self, tier: str, fn: Callable[[], Awaitable[T]]) -> T:
        return await self.storage.call(tier, fn, policy=self.policy)

    # -- 2 ---------------------------------------------------------------------------------
    async def _copy(self, plan: Plan, job: CopyJob) -> _Progress:
        """Copy and verify; the progress not recorded yet (the publication records it)."""
        progress = _Progress(job)
        copier = Copier(
            self.storage,
            job,
            policy=self.policy,
            in_flight=self.settings.in_flight,
            on_chunk=progress.chunk_done,
            throttle=Throttle(self.settings.throttle_bytes_per_s),
        )
        task = asyncio.create_task(copier.run())
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            while not task.done():
                await asyncio.wait(  # the copy's end, a stop, or time to record progress
                    [task, stop],
                    timeout=self.settings.progress_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if self.stopping.is_set() and not task.done():
                    await self._checkpoint(plan, progress, copier, task)
                if not task.done():
                    await self._flush(plan, progress, final=False)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        checksum = task.result()
        if checksum != plan.checksum:
            await self._flush(plan, progress, final=False)  # the bytes it wrote all the same
            async with self.sessions() as session:
                row = await get_dataset(
                    session=session, tenant_id=plan.tenant_id, name=plan.dataset
                )
            if row is None or row.checksum != plan.checksum:
                raise DatasetChanged("the dataset was deleted or overwritten during the copy")
            raise VerificationFailed(
                f"verification failed: the copy's checksum {checksum} does not match the "
                f"source's {plan.checksum}; nothing was published"
            )
        return progress

    async def _checkpoint(
        self, plan: Plan, progress: _Progress, copier: Copier, task: asyncio.Task[str]
    ) -> None:
        """Let the chunks being copied finish, start no more, record them; ``Checkpointed``
        (unless the copy ended meanwhile: then it goes on as usual)."""
        await copier.drain()
        idle = asyncio.ensure_future(copier.idle.wait())
        try:
            await asyncio.wait([task, idle], return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
        if task.done():
            return
        task.cancel()  # the verifier, waiting for chunks that no one copies now
        with contextlib.suppress(BaseException):
            await task
        try:
            await self._flush(plan, progress, final=True)
        except service.LeaseLost:
            raise
        except Exception as exc:  # those chunks are copied again by the next owner
            log.warning(
                "checkpoint_not_saved", migration=str(plan.migration_id), error=type(exc).__name__
            )
        raise Checkpointed

    async def _flush(self, plan: Plan, progress: _Progress, *, final: bool) -> None:
        chunks, copied = progress.take()
        try:
            async with self.sessions() as session, session.begin():
                await service.record_progress(
                    session=session,
                    migration_id=plan.migration_id,
                    owner=self.owner,
                    chunks=chunks,
                    bytes_done=progress.bytes_done,
                    copied=copied,
                    lease_s=self.settings.lease_s,
                )
        except service.LeaseLost:
            raise
        except Exception as exc:
            progress.give_back(chunks, copied)  # written next time
            if final:
                raise
            log.warning(
                "progress_not_saved", migration=str(plan.migration_id), error=type(exc).__name__
            )

    # -- 3 ---------------------------------------------------------------------------------
    async def _publish(self, plan: Plan, job: CopyJob, progress: _Progress) -> None:
        """One transaction: the object visible, the dataset on its new tier, the last bytes
        counted, and SUCCEEDED at once unless a source copy is left to delete (``move``)."""
        target = self.storage.tier(job.target)
        async with self.sessions() as session, session.begin():
            m = await service.lock_owned(
                session=session, migration_id=plan.migration_id, owner=self.owner
            )
            await lock_name(session=session, tenant_id=m.tenant_id, name=m.dataset)
            dataset = await get_dataset(session=session, tenant_id=m.tenant_id, name=m.dataset)
            if dataset is None or dataset.checksum != m.checksum:
                raise DatasetChanged("the dataset was deleted or overwritten during the copy")
            await self._call(job.target, lambda: target.publish(job.upload, job.etags()))
            await self._record_published(session, m, dataset)
            m.bytes_copied += progress.take()[1]
            if plan.mode is MigrationMode.COPY or m.from_tier == m.to_tier:
                await session.flush()
                await service.finish(
                    session=session,
                    migration_id=m.id,
                    owner=self.owner,
                    state=MigrationState.SUCCEEDED,
                )
                plan.finished = True

    async def _record_published(
        self, session: AsyncSession, m: Migration, dataset: Dataset
    ) -> None:
        dataset.tiers = _tiers_after(dataset, m)
        dataset.tier = m.to_tier
        dataset.updated_at = utcnow()
        m.published_at = utcnow()
        m.bytes_done = m.bytes_total
        m.upload = None

    # -- 4 ---------------------------------------------------------------------------------
    async def _finish(self, plan: Plan) -> None:
        async with self.sessions() as session, session.begin():
            m = await service.lock_owned(
                session=session, migration_id=plan.migration_id, owner=self.owner
            )
            note = None
            if plan.mode is MigrationMode.MOVE and m.from_tier != m.to_tier:
                try:
                    await remove_unlisted(
                        session=session,
                        storage=self.storage,
                        tenant_id=m.tenant_id,
                        name=m.dataset,
                        tiers=(m.from_tier,),
                    )
                except Exception as exc:  # the data moved; only the old copy is left behind
                    note = f"moved, but the source copy on {m.from_tier!r} was not deleted: {exc}"
            await service.finish(
                session=session,
                migration_id=m.id,
                owner=self.owner,
                state=MigrationState.SUCCEEDED,
                error=note,
            )
        log.info("migration_succeeded", migration=str(plan.migration_id))

    async def _fail(self, migration_id: uuid.UUID, plan: Plan | None, exc: Exception) -> None:
        if plan is not None and plan.job is not None:
            job = plan.job
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await self.storage.tier(job.target).abort(job.upload)
        try:
            async with self.sessions() as session, session.begin():
                if plan is not None and not isinstance(exc, DatasetChanged):
                    row = await get_dataset(
                        session=session, tenant_id=plan.tenant_id, name=plan.dataset
                    )
                    if row is None or row.checksum != plan.checksum:  # the real cause
                        exc = DatasetChanged(
                            "the dataset was deleted or overwritten during the copy"
                        )
                await service.finish(
                    session=session,
                    migration_id=migration_id,
                    owner=self.owner,
                    state=MigrationState.FAILED,
                    error=describe(exc),
                    upload=None,
                )
        except Exception as again:
            log.warning("migration_fail_not_saved", migration=str(migration_id), error=str(again))


class _Progress:
    """Chunks done and bytes written since the last flush."""

    def __init__(self, job: CopyJob) -> None:
        self.job = job
        self.pending: dict[int, str | None] = {}
        self.copied = 0
        self.bytes_done = sum(job.span(i)[1] for i in job.done)

    def chunk_done(self, index: int, etag: str | None, length: int) -> None:
        self.pending[index] = etag
        self.copied += length
        self.bytes_done += length

    def take(self) -> tuple[dict[int, str | None], int]:
        pending, copied = self.pending, self.copied
        self.pending, self.copied = {}, 0
        return pending, copied

    def give_back(self, chunks: dict[int, str | None], copied: int) -> None:
        self.pending.update(chunks)
        self.copied += copied
