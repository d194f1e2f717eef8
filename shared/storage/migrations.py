"""The migration lifecycle: states, the allowed transitions, the one function that writes
``migrations.state`` (under a row lock), and the use case that records a request.

PENDING → RUNNING → SUCCEEDED | FAILED; PENDING → FAILED (e.g. the dataset was deleted).
SUCCEEDED and FAILED are final; reaching one stages a ``migration.finished`` event in the same
transaction (the scheduler dispatches a job whose stage-in it ends). A RUNNING migration taken
over by another datamover after its lease expired stays RUNNING (a new owner, not a new state).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.locks import lock_row
from shared.db.models import Dataset, Migration, MigrationChunk
from shared.db.outbox import add_event
from shared.errors import Conflict, IllegalTransition, Invalid
from shared.events import MigrationFinished, MigrationRequested, utcnow
from shared.idempotency import check_replay
from shared.storage.catalog import require_dataset
from shared.storage.names import validate_name
from shared.storage.quota import release, reserve


class MigrationState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class MigrationMode(StrEnum):
    COPY = "copy"
    MOVE = "move"


FINAL: frozenset[MigrationState] = frozenset({MigrationState.SUCCEEDED, MigrationState.FAILED})

ALLOWED: dict[MigrationState, frozenset[MigrationState]] = {
    MigrationState.PENDING: frozenset({MigrationState.RUNNING, MigrationState.FAILED}),
    MigrationState.RUNNING: frozenset({MigrationState.SUCCEEDED, MigrationState.FAILED}),
    MigrationState.SUCCEEDED: frozenset(),
    MigrationState.FAILED: frozenset(),
}


def allowed(current: MigrationState, proposed: MigrationState) -> bool:
    return proposed in ALLOWED[current]


async def lock_migration(
    session: AsyncSession, migration_id: uuid.UUID, *, tenant_id: uuid.UUID | None = None
) -> Migration:
    return await lock_row(session, Migration, migration_id, tenant_id=tenant_id)


async def set_migration_state(
    session: AsyncSession,
    migration_id: uuid.UUID,
    proposed: MigrationState,
    *,
    expected_owner: str | None = None,
    **fields: Any,
) -> Migration:
    """Lock the row, check the transition, apply it with ``fields``. ``expected_owner``
    fences a datamover whose lease was taken over: it may no longer change the migration."""
    migration = await lock_migration(session, migration_id)
    current = MigrationState(migration.state)
    if expected_owner is not None and migration.owner != expected_owner:
        raise IllegalTransition(
            f"migration is owned by {migration.owner!r}, not {expected_owner!r}"
        )
    if not allowed(current, proposed):
        raise IllegalTransition(f"migration is {current}; cannot become {proposed}")
    now = utcnow()
    migration.state = proposed.value
    migration.updated_at = now
    if proposed is MigrationState.RUNNING and migration.started_at is None:
        migration.started_at = now
    if proposed in FINAL:
        migration.finished_at = now
        migration.owner = None
        migration.lease_expires_at = None
        await session.execute(
            delete(MigrationChunk).where(MigrationChunk.migration_id == migration_id)
        )
        # a copy's reservation: its bytes are now stored (the dataset lists the tier) or gone
        await release(session=session, reservation_id=migration_id)
    for name, value in fields.items():
        setattr(migration, name, value)
    if proposed in FINAL:  # in the same transaction as the state: wakes the scheduler
        await add_event(
            session,
            MigrationFinished(
                tenant_id=migration.tenant_id,
                migration_id=migration.id,
                dataset=migration.dataset,
                to_tier=migration.to_tier,
                state=proposed.value,
                job_id=migration.job_id,
            ),
        )
    await session.flush()
    return migration


@dataclass(frozen=True)
class Requested:
    migration: Migration
    replayed: bool


def requested_event(migration: Migration) -> MigrationRequested:
    """The ``migration.requested`` event that has a datamover start (or resume) it."""
    return MigrationRequested(
        tenant_id=migration.tenant_id,
        migration_id=migration.id,
        dataset=migration.dataset,
        to_tier=migration.to_tier,
        mode=migration.mode,
    )


async def request_migration(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    dataset: str,
    to_tier: str,
    mode: MigrationMode,
    tiers: Collection[str],
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    idempotency_window_s: int = 86_400,
    job_id: uuid.UUID | None = None,
    quota: int | None = None,
) -> Requested:
    """Record a PENDING migration and its ``migration.requested`` event (same transaction).

    404 for an unknown dataset, 422 for an unknown tier, 409 when the dataset is already on
    ``to_tier``. The datamover re-reads the dataset when it starts the copy. A ``copy`` adds
    a copy that counts against the ``storage_bytes`` ``quota``: its bytes are reserved until
    it ends (413 if they do not fit; ``None``: not checked, for the platform's stage-in).
    With an ``idempotency_key``, ``request_hash`` is the body's fingerprint
    (``shared.idempotency``): a replay with another body is a 422.
    """
    validate_name(dataset, loc=("body", "dataset"))
    if to_tier not in tiers:
        raise Invalid(
            f"tier {to_tier!r} is not configured",
            errors=[{"loc": ["body", "to_tier"], "msg": f"one of {sorted(tiers)}"}],
        )
    key = None
    if idempotency_key is not None:
        key = _Key(tenant_id, idempotency_key, request_hash, idempotency_window_s)
        found = await key.find(session)
        if found is not None:
            return key.replayed(found)
    row = await require_dataset(session=session, tenant_id=tenant_id, name=dataset)
    if row.tier == to_tier:
        raise Conflict(f"dataset {dataset!r} is already on tier {to_tier!r}")
    inserted = await _insert(session, row, to_tier=to_tier, mode=mode, job_id=job_id, key=key)
    if inserted is None:  # a concurrent request with the same key won the race
        assert key is not None
        found = await key.find(session)
        if found is None:
            raise Conflict("a request with this Idempotency-Key is in progress; retry")
        return key.replayed(found)
    if quota is not None and mode is MigrationMode.COPY and to_tier not in row.tiers:
        await reserve(
            session=session,
            tenant_id=tenant_id,
            nbytes=row.size,
            quota=quota,
            reservation_id=inserted.id,
            ttl_s=None,  # held until the migration ends (``set_migration_state``)
        )
    await add_event(session, requested_event(inserted))
    return Requested(inserted, replayed=False)


@dataclass(frozen=True)
class _Key:
    """A request's idempotency key, the fingerprint of its body, and how long it holds."""

    tenant_id: uuid.UUID
    key: str
    request_hash: str | None
    window_s: int

    async def find(self, session: AsyncSession) -> Migration | None:
        """The migration this key recorded within the window (an older one lets go of it)."""
        found = (
            await session.execute(
                select(Migration).where(
                    Migration.tenant_id == self.tenant_id, Migration.idempotency_key == self.key
                )
            )
        ).scalar_one_or_none()
        if found is None:
            return None
        if found.created_at < utcnow() - timedelta(seconds=self.window_s):
            await session.execute(
                update(Migration).where(Migration.id == found.id).values(idempotency_key=None)
            )
            return None
        return found

    def replayed(self, found: Migration) -> Requested:
        if self.request_hash is not None:
            check_replay(stored=found.request_hash, given=self.request_hash)
        return Requested(found, replayed=True)


async def _insert(
    session: AsyncSession,
    dataset: Dataset,
    *,
    to_tier: str,
    mode: MigrationMode,
    job_id: uuid.UUID | None,
    key: _Key | None,
) -> Migration | None:
    """The PENDING migration of ``dataset`` as it is now; ``None`` when a row with the same
    idempotency key exists (a concurrent request inserted it)."""
    now = utcnow()
    return (
        await session.execute(
            insert(Migration)
            .values(
                id=uuid.uuid4(),
                tenant_id=dataset.tenant_id,
                dataset=dataset.name,
                from_tier=dataset.tier,
                to_tier=to_tier,
                mode=mode.value,
                state=MigrationState.PENDING.value,
                bytes_total=dataset.size,
                bytes_done=0,
                bytes_copied=0,
                checksum=dataset.checksum,
                attempts=0,
                job_id=job_id,
                idempotency_key=None if key is None else key.key,
                request_hash=None if key is None else key.request_hash,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=[Migration.tenant_id, Migration.idempotency_key])
            .returning(Migration)
        )
    ).scalar_one_or_none()
