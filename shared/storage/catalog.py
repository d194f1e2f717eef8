"""Dataset rows in PostgreSQL and the rules that keep them and the tiers consistent.

Every change to a dataset's objects happens under ``lock_name`` (a transaction-scoped
advisory lock on ``(tenant, name)``, which works whether or not the row exists yet), and an
object on a tier is deleted only when, under that lock, the row does not list that tier.
So a slow cleanup can never remove bytes that a newer upload or migration published.
Publishing a new version also claims the name (``claim_name``): a name that is another
dataset's folder, or whose folder is another dataset, is a 409.
Functions take ``session`` as a keyword and never commit.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Dataset
from shared.errors import Conflict, NotFound
from shared.events import utcnow
from shared.storage.checksum import format_checksum, new_hasher
from shared.storage.names import object_key, validate_name
from shared.storage.quota import lock_tenant_storage
from shared.storage.registry import Storage
from shared.storage.tiers import Upload


@dataclass(frozen=True)
class Published:
    dataset: Dataset
    created: bool
    stale_tiers: tuple[str, ...]  # tiers that held the previous version (to clean up)


async def lock_name(*, session: AsyncSession, tenant_id: uuid.UUID, name: str) -> None:
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"dataset:{tenant_id}/{name}"},
    )


async def get_dataset(*, session: AsyncSession, tenant_id: uuid.UUID, name: str) -> Dataset | None:
    return (
        await session.execute(
            select(Dataset)
            .where(Dataset.tenant_id == tenant_id, Dataset.name == name)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()


async def require_dataset(*, session: AsyncSession, tenant_id: uuid.UUID, name: str) -> Dataset:
    dataset = await get_dataset(session=session, tenant_id=tenant_id, name=name)
    if dataset is None:
        raise NotFound(f"dataset {name!r} not found")
    return dataset


async def claim_name(*, session: AsyncSession, tenant_id: uuid.UUID, name: str) -> None:
    """Before a new version of ``name`` is published: lock the name, then the tenant's
    storage (``quota.lock_tenant_storage``, held until commit), then refuse a clash. Names
    clash across names (``a`` and ``a/b``), so the check and the row it protects must be
    serialised per tenant: two racing publishers of ``p/a`` and ``p/a/b`` would both pass
    it under their own name locks. Always in this order (name, then tenant): no deadlock."""
    await lock_name(session=session, tenant_id=tenant_id, name=name)
    await lock_tenant_storage(session=session, tenant_id=tenant_id)
    await check_no_clash(session=session, tenant_id=tenant_id, name=name)


async def check_no_clash(*, session: AsyncSession, tenant_id: uuid.UUID, name: str) -> None:
    """A name cannot be both a dataset and a folder of others (``a`` and ``a/b``): on a
    directory tier one would be a file where the other needs a folder."""
    parts = name.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts))]
    clash = await session.scalar(
        select(Dataset.name)
        .where(
            Dataset.tenant_id == tenant_id,
            or_(Dataset.name.in_(prefixes), Dataset.name.startswith(name + "/", autoescape=True)),
        )
        .limit(1)
    )
    if clash is not None:
        raise Conflict(f"dataset name {name!r} clashes with the existing dataset {clash!r}")


async def record_published(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    name: str,
    size: int,
    checksum: str,
    tier: str,
) -> Published:
    """Insert or overwrite the row for a version just published on ``tier`` (under the lock)."""
    now = utcnow()
    existing = await get_dataset(session=session, tenant_id=tenant_id, name=name)
    if existing is None:
        dataset = Dataset(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            name=name,
            size=size,
            checksum=checksum,
            tier=tier,
            tiers=[tier],
            created_at=now,
            updated_at=now,
        )
        session.add(dataset)
        await session.flush()
        return Published(dataset, created=True, stale_tiers=())
    stale = tuple(t for t in existing.tiers if t != tier)
    existing.size = size
    existing.checksum = checksum
    existing.tier = tier
    existing.tiers = [tier]
    existing.updated_at = now
    await session.flush()
    return Published(existing, created=False, stale_tiers=stale)


async def remove_unlisted(
    *,
    session: AsyncSession,
    storage: Storage,
    tenant_id: uuid.UUID,
    name: str,
    tiers: tuple[str, ...],
) -> list[str]:
    """Delete the object on each of ``tiers`` that the row (if any) does not list, under the
    lock. Returns the tiers cleaned."""
    await lock_name(session=session, tenant_id=tenant_id, name=name)
    row = await get_dataset(session=session, tenant_id=tenant_id, name=name)
    listed = set(row.tiers) if row is not None else set()
    key = object_key(tenant_id, name)
    cleaned = []
    for tier in tiers:
        if tier in listed or tier not in storage.tiers:
            continue
        await storage.call(tier, lambda t=tier: storage.tier(t).delete(key))  # type: ignore[misc]
        cleaned.append(tier)
    return cleaned


def _hash_file(path: Path) -> tuple[int, str]:
    hasher = new_hasher()
    size = 0
    with path.open("rb") as f:
        while block := f.read(8 * 2**20):
            hasher.update(block)
            size += len(block)
    return size, format_checksum(hasher)


async def publish_local_file(
    *,
    session: AsyncSession,
    storage: Storage,
    tenant_id: uuid.UUID,
    name: str,
    path: Path,
    tier: str = "local",
) -> Published:
    """Register a file written beside a directory tier (a job's output) as a dataset: hash
    it, move it into place atomically under the lock, and record the row. ``path`` must be
    on the tier's filesystem (``<root>/.stratus-tmp/...`` is the place). The caller removes
    the objects of ``stale_tiers`` afterwards (``remove_unlisted``)."""
    validate_name(name)
    size, checksum = await asyncio.to_thread(_hash_file, path)
    await claim_name(session=session, tenant_id=tenant_id, name=name)
    upload = Upload(key=object_key(tenant_id, name), temp=str(path))
    await storage.tier(tier).publish(upload, [])
    return await record_published(
        session=session, tenant_id=tenant_id, name=name, size=size, checksum=checksum, tier=tier
    )


async def _holds(storage: Storage, tier: str, key: str, checksum: str) -> bool:
    """Whether the object ``key`` on ``tier`` has exactly the bytes of ``checksum``."""
    try:
        reader = await storage.call(tier, lambda: storage.tier(tier).open_reader(key))
    except FileNotFoundError:
        return False
    hasher = new_hasher()
    try:
        while block := await reader.read(8 * 2**20):
            hasher.update(block)
    finally:
        await reader.close()
    return format_checksum(hasher) == checksum


async def publish_upload(
    *,
    session: AsyncSession,
    storage: Storage,
    tenant_id: uuid.UUID,
    name: str,
    tier: str,
    upload: Upload,
    etags: list[str | None],
    size: int,
    checksum: str,
) -> Published:
    """Register a verified partial object on ``tier`` (a job's output staged out) as the
    dataset: publish it atomically under the lock and record the row. If an earlier try
    published it and then did not commit, the object already there is accepted only when
    its bytes hash to ``checksum``. The caller removes ``stale_tiers`` afterwards."""
    validate_name(name)
    await claim_name(session=session, tenant_id=tenant_id, name=name)
    try:
        await storage.call(tier, lambda: storage.tier(tier).publish(upload, etags))
    except FileNotFoundError:
        if not await _holds(storage, tier, upload.key, checksum):
            raise
    return await record_published(
        session=session, tenant_id=tenant_id, name=name, size=size, checksum=checksum, tier=tier
    )
