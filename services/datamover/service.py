"""Datamover use cases on the database. Functions take ``session`` as a keyword and never
commit; the runner owns the transactions.

Claiming: PENDING migrations start oldest first, at most ``per_tenant`` RUNNING per tenant
and one at a time per dataset; a RUNNING migration whose lease expired (its datamover died)
is taken over and resumes from its recorded chunks.

Stage-in (for the scheduler): ``request_stage_in`` asks for a dataset to be brought to the
``local`` tier for a job, ``stage_in_status`` says whether the job's inputs are there yet.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, text, true, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Dataset, Migration, MigrationChunk
from shared.db.outbox import add_events
from shared.errors import IllegalTransition
from shared.events import MigrationRequested, utcnow
from shared.storage.catalog import get_dataset
from shared.storage.migrations import (
    MigrationMode,
    MigrationState,
    lock_migration,
    request_migration,
    set_migration_state,
)
from shared.storage.tiers import Upload

CLAIM_LOCK = "stratus.migrations.claim"


class LeaseLost(Exception):
    """Another datamover took the migration over: stop touching it."""


async def claim(
    *,
    session: AsyncSession,
    owner: str,
    capacity: int,
    per_tenant: int,
    lease_s: float,
    reclaim_own: bool = False,
) -> list[uuid.UUID]:
    """Take up to ``capacity`` migrations to run. ``reclaim_own`` (at start-up) also takes
    back RUNNING ones leased to this owner: they were orphaned by this process's death."""
    if capacity <= 0:
        return []
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": CLAIM_LOCK}
    )
    now = await session.scalar(select(func.now()))
    running = select(Migration.tenant_id, Migration.dataset).where(
        Migration.state == MigrationState.RUNNING.value
    )
    per: dict[uuid.UUID, int] = {}
    busy: set[tuple[uuid.UUID, str]] = set()
    for tenant_id, dataset in (await session.execute(running)).all():
        per[tenant_id] = per.get(tenant_id, 0) + 1
        busy.add((tenant_id, dataset))
    orphaned = Migration.lease_expires_at < now
    if reclaim_own:
        orphaned = or_(orphaned, Migration.owner == owner)
    candidates = (
        await session.execute(
            select(Migration)
            .where(
                or_(
                    Migration.state == MigrationState.PENDING.value,
                    and_(Migration.state == MigrationState.RUNNING.value, orphaned),
                )
            )
            .order_by(Migration.created_at, Migration.id)
            .limit(200)
            .with_for_update(skip_locked=True)
        )
    ).scalars()
    lease = now + timedelta(seconds=lease_s) if now is not None else None
    claimed: list[uuid.UUID] = []
    for m in list(candidates):
        if len(claimed) >= capacity:
            break
        if m.state == MigrationState.RUNNING.value:  # take over where it stopped
            m.owner, m.lease_expires_at, m.attempts = owner, lease, m.attempts + 1
            claimed.append(m.id)
            continue
        if per.get(m.tenant_id, 0) >= per_tenant or (m.tenant_id, m.dataset) in busy:
            continue  # waits its turn (in order: nothing later of this tenant overtakes it)
        await set_migration_state(
            session,
            m.id,
            MigrationState.RUNNING,
            owner=owner,
            lease_expires_at=lease,
            attempts=m.attempts + 1,
        )
        per[m.tenant_id] = per.get(m.tenant_id, 0) + 1
        busy.add((m.tenant_id, m.dataset))
        claimed.append(m.id)
    await session.flush()
    return claimed


async def lock_owned(*, session: AsyncSession, migration_id: uuid.UUID, owner: str) -> Migration:
    migration = await lock_migration(session, migration_id)
    if migration.owner != owner or migration.state != MigrationState.RUNNING.value:
        raise LeaseLost(f"migration {migration_id} is no longer ours")
    return migration


async def refresh_source(
    *, session: AsyncSession, migration: Migration, chunk_bytes: int
) -> Dataset | None:
    """On the first start, bind the migration to the dataset as it is now (its tier, size
    and checksum), since earlier migrations may have moved it. Returns the dataset row."""
    dataset = await get_dataset(
        session=session, tenant_id=migration.tenant_id, name=migration.dataset
    )
    if migration.chunk_bytes is None and dataset is not None:
        migration.from_tier = dataset.tier
        migration.bytes_total = dataset.size
        migration.checksum = dataset.checksum
        migration.chunk_bytes = chunk_bytes
        migration.updated_at = utcnow()
    return dataset


async def done_chunks(*, session: AsyncSession, migration_id: uuid.UUID) -> dict[int, str | None]:
    rows = await session.execute(
        select(MigrationChunk.idx, MigrationChunk.etag).where(
            MigrationChunk.migration_id == migration_id
        )
    )
    return {row.idx: row.etag for row in rows.all()}


async def start_upload(*, session: AsyncSession, migration: Migration, upload: Upload) -> None:
    """A new partial object on the target: forget chunks recorded for an older one."""
    await session.execute(delete(MigrationChunk).where(MigrationChunk.migration_id == migration.id))
    migration.upload = upload.to_json()
    migration.bytes_done = 0
    migration.updated_at = utcnow()


async def record_progress(
    *,
    session: AsyncSession,
    migration_id: uuid.UUID,
    owner: str,
    chunks: dict[int, str | None],
    bytes_done: int,
    copied: int,
    lease_s: float,
) -> None:
    """Chunks done since the last call, ``bytes_done``, ``copied`` more bytes written, and
    a longer lease; ``LeaseLost`` when another datamover owns the migration now."""
    result = await session.execute(
        update(Migration)
        .where(
            Migration.id == migration_id,
            Migration.owner == owner,
            Migration.state == MigrationState.RUNNING.value,
        )
        .values(
            bytes_done=bytes_done,
            bytes_copied=Migration.bytes_copied + copied,
            lease_expires_at=func.now() + timedelta(seconds=lease_s),
            updated_at=func.now(),
        )
        .returning(Migration.id)
    )
    if result.scalar_one_or_none() is None:
        raise LeaseLost(f"migration {migration_id} is no longer ours")
    if chunks:
        await session.execute(
            insert(MigrationChunk)
            .values(
                [{"migration_id": migration_id, "idx": i, "etag": e} for i, e in chunks.items()]
            )
            .on_conflict_do_nothing()
        )


async def release(
    *, session: AsyncSession, owner: str, migration_id: uuid.UUID | None = None
) -> list[uuid.UUID]:
    """End the leases of this owner's RUNNING migrations (or of one) now, their progress
    being recorded, and wake the datamovers, so that one resumes them at once: on shutdown,
    and after the database went away under a migration."""
    only = Migration.id == migration_id if migration_id is not None else true()
    rows = (
        await session.execute(
            update(Migration)
            .where(Migration.owner == owner, Migration.state == MigrationState.RUNNING.value, only)
            .values(lease_expires_at=func.now() - timedelta(seconds=1), updated_at=func.now())
            .returning(
                Migration.id,
                Migration.tenant_id,
                Migration.dataset,
                Migration.to_tier,
                Migration.mode,
            )
        )
    ).all()
    await add_events(
        session,
        [
            MigrationRequested(
                tenant_id=r.tenant_id,
                migration_id=r.id,
                dataset=r.dataset,
                to_tier=r.to_tier,
                mode=r.mode,
            )
            for r in rows
        ],
    )
    return [r.id for r in rows]


async def finish(
    *,
    session: AsyncSession,
    migration_id: uuid.UUID,
    owner: str,
    state: MigrationState,
    **fields: Any,
) -> Migration:
    try:
        return await set_migration_state(
            session, migration_id, state, expected_owner=owner, **fields
        )
    except IllegalTransition as exc:
        raise LeaseLost(str(exc)) from exc


@dataclass(frozen=True)
class StageIn:
    """Where a job's inputs stand: ``ready`` when every input is on ``local``."""

    ready: bool
    waiting_for: tuple[str, ...]  # input datasets not on local yet
    failed: tuple[str, ...]  # errors of failed stage-in migrations


async def request_stage_in(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    dataset: str,
    tiers: list[str],
) -> Migration | None:
    """Ask for ``dataset`` to be copied to ``local`` for ``job_id`` (idempotent per job and
    dataset). ``None`` when it is on ``local`` already."""
    row = await get_dataset(session=session, tenant_id=tenant_id, name=dataset)
    if row is not None and "local" in row.tiers:
        return None
    requested = await request_migration(
        session=session,
        tenant_id=tenant_id,
        dataset=dataset,
        to_tier="local",
        mode=MigrationMode.COPY,
        tiers=tiers,
        idempotency_key=f"stage-in:{job_id}:{dataset}"[:255],
        job_id=job_id,
    )
    return requested.migration


async def stage_in_status(
    *, session: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID, inputs: list[str]
) -> StageIn:
    rows = await session.execute(
        select(Dataset.name, Dataset.tiers).where(
            Dataset.tenant_id == tenant_id, Dataset.name.in_(inputs)
        )
    )
    on_local = {name for name, tiers in rows.all() if "local" in tiers}
    waiting = tuple(sorted(set(inputs) - on_local))
    failed = await session.execute(
        select(Migration.dataset, Migration.error).where(
            Migration.job_id == job_id,
            Migration.state == MigrationState.FAILED.value,
            Migration.dataset.in_(waiting),
        )
    )
    errors = tuple(f"{name}: {error}" for name, error in failed.all())
    return StageIn(ready=not waiting, waiting_for=waiting, failed=errors)
