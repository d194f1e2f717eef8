"""Datamover use cases on the database. Functions take ``session`` as a keyword and never
commit; the runner owns the transactions.

Claiming: PENDING migrations start oldest first, at most ``per_tenant`` RUNNING per tenant
and one at a time per dataset; a RUNNING migration whose lease expired (its datamover died)
is taken over and resumes from its recorded chunks.

A job's stage-in is a COPY migration to ``local`` like any other (requested by the scheduler
through ``shared.storage.stagein``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, text, true, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Dataset, Migration, MigrationChunk
from shared.db.outbox import add_events
from shared.errors import IllegalTransition
from shared.events import utcnow
from shared.storage.catalog import get_dataset
from shared.storage.migrations import (
    MigrationState,
    lock_migration,
    requested_event,
    set_migration_state,
)
from shared.storage.tiers import Upload

CLAIM_LOCK = "stratus.migrations.claim"


class LeaseLost(Exception):
    """Another datamover took the migration over: stop touching it."""


@dataclass
class _Running:
    """The RUNNING migrations, as the claim rules count them."""

    per_tenant: dict[uuid.UUID, int] = field(default_factory=dict)
    datasets: set[tuple[uuid.UUID, str]] = field(default_factory=set)

    def add(self, tenant_id: uuid.UUID, dataset: str) -> None:
        self.per_tenant[tenant_id] = self.per_tenant.get(tenant_id, 0) + 1
        self.datasets.add((tenant_id, dataset))

    def may_start(self, m: Migration, per_tenant: int) -> bool:
        """Below the tenant's limit and no migration of the same dataset running."""
        busy = (m.tenant_id, m.dataset) in self.datasets
        return self.per_tenant.get(m.tenant_id, 0) < per_tenant and not busy


async def _running(session: AsyncSession) -> _Running:
    running = _Running()
    rows = await session.execute(
        select(Migration.tenant_id, Migration.dataset).where(
            Migration.state == MigrationState.RUNNING.value
        )
    )
    for tenant_id, dataset in rows.all():
        running.add(tenant_id, dataset)
    return running


async def _claimable(
    session: AsyncSession, *, owner: str, now: datetime, reclaim_own: bool
) -> list[Migration]:
    """PENDING migrations and RUNNING ones whose lease expired (or this owner's, with
    ``reclaim_own``), oldest first, locked (those another datamover holds skipped)."""
    orphaned = Migration.lease_expires_at < now
    if reclaim_own:
        orphaned = or_(orphaned, Migration.owner == owner)
    rows = await session.execute(
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
    return list(rows.scalars())


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
    assert now is not None
    running = await _running(session)
    lease = now + timedelta(seconds=lease_s)
    claimed: list[uuid.UUID] = []
    for m in await _claimable(session, owner=owner, now=now, reclaim_own=reclaim_own):
        if len(claimed) >= capacity:
            break
        if m.state == MigrationState.RUNNING.value:  # take over where it stopped
            m.owner, m.lease_expires_at, m.attempts = owner, lease, m.attempts + 1
            claimed.append(m.id)
            continue
        if not running.may_start(m, per_tenant):
            continue  # waits its turn (in order: nothing later of this tenant overtakes it)
        await set_migration_state(
            session,
            m.id,
            MigrationState.RUNNING,
            owner=owner,
            lease_expires_at=lease,
            attempts=m.attempts + 1,
        )
        running.add(m.tenant_id, m.dataset)
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
    released = (
        await session.scalars(
            update(Migration)
            .where(Migration.owner == owner, Migration.state == MigrationState.RUNNING.value, only)
            .values(lease_expires_at=func.now() - timedelta(seconds=1), updated_at=func.now())
            .returning(Migration)
        )
    ).all()
    await add_events(session, [requested_event(m) for m in released])
    return [m.id for m in released]


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
