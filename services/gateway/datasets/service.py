"""Dataset use cases for the gateway. Functions take ``session`` as a keyword and never commit.

An upload is received in two steps: ``receive`` streams the body into an invisible partial
object on the tier (hashing as it goes, never holding more than a chunk or two in memory,
holding no database connection, and writing no byte that its quota reservation does not
cover), then ``publish`` makes it visible and records the row in the request's transaction,
under the dataset's lock and the tenant's.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Dataset
from shared.logging import get_logger
from shared.pagination import PageQuery, newest_first
from shared.storage import Storage, object_key
from shared.storage.catalog import (
    Published,
    claim_name,
    lock_name,
    record_published,
    remove_unlisted,
    require_dataset,
)
from shared.storage.checksum import Hasher, format_checksum, new_hasher
from shared.storage.quota import Hold, check_fits, release, replaced_bytes
from shared.storage.tiers import Reader, Upload

log = get_logger(__name__)


@dataclass
class Staged:
    """An upload received but not yet visible."""

    tier: str
    upload: Upload
    size: int = 0
    checksum: str = ""
    etags: list[str | None] = field(default_factory=list)


async def upload(
    *,
    session: AsyncSession,
    sessions: async_sessionmaker[AsyncSession],
    storage: Storage,
    tenant_id: uuid.UUID,
    name: str,
    tier: str | None,
    body: AsyncIterator[bytes],
    declared: int | None,
    quota: int,
) -> Published:
    """Store ``body`` as ``name`` on ``tier`` (``None``: the default tier): reserve, receive,
    publish. ``declared``: the length the client announced, if any. Whatever fails on the way
    leaves no partial object and no reservation behind."""
    tier = storage.settings.default_tier if tier is None else tier
    storage.tier(tier)  # an unknown tier is refused before the quota is asked
    hold = await hold_upload(
        sessions=sessions, tenant_id=tenant_id, name=name, quota=quota, declared=declared
    )
    try:
        staged = await receive(
            storage=storage, tenant_id=tenant_id, name=name, tier=tier, body=body, hold=hold
        )
        try:
            return await publish(
                session=session,
                storage=storage,
                tenant_id=tenant_id,
                name=name,
                staged=staged,
                quota=quota,
                hold=hold,
            )
        except BaseException:
            await discard(storage=storage, staged=staged)
            raise
    except BaseException:
        await let_go(hold)
        raise


async def hold_upload(
    *,
    sessions: async_sessionmaker[AsyncSession],
    tenant_id: uuid.UUID,
    name: str,
    quota: int,
    declared: int | None,
) -> Hold:
    """The upload's reservation against the quota: a declared length at once (413 before a
    byte is read), else step by step as the body streams (``receive``). What the version it
    overwrites stores is counted as freed. Short transactions of their own: none is held
    while streaming."""
    async with sessions() as session:
        replacing = await replaced_bytes(session=session, tenant_id=tenant_id, name=name)
    hold = Hold(sessions, tenant_id=tenant_id, quota=quota, replacing=replacing)
    if declared is not None:
        await hold.cover(declared)
    return hold


async def let_go(hold: Hold) -> None:
    """Give a failed upload's reservation back (best effort: it expires anyway)."""
    try:
        await hold.release()
    except Exception as exc:
        log.warning("reservation_release_failed", error=type(exc).__name__)


async def receive(
    *,
    storage: Storage,
    tenant_id: uuid.UUID,
    name: str,
    tier: str,
    body: AsyncIterator[bytes],
    hold: Hold,
) -> Staged:
    """Stream ``body`` into a partial object in chunks, one write in flight beside the read;
    no byte is written before ``hold`` covers it."""
    target = storage.tier(tier)
    key = object_key(tenant_id, name)
    upload = await storage.guard(tier, lambda: target.begin(key, uuid.uuid4().hex, None))
    staged = Staged(tier, upload)
    hasher = new_hasher()
    size = storage.chunk_bytes
    pending: asyncio.Task[str | None] | None = None
    try:
        async with aclosing(_chunks(body, size, staged=staged, hold=hold, hasher=hasher)) as chunks:
            async for data in chunks:
                if pending is not None:
                    staged.etags.append(await pending)
                index = len(staged.etags)  # every chunk but the last is ``size`` long
                pending = asyncio.create_task(_write(storage, staged, index, index * size, data))
        if pending is not None:
            staged.etags.append(await pending)
            pending = None
    except BaseException:
        if pending is not None:
            pending.cancel()
        await discard(storage=storage, staged=staged)
        raise
    staged.checksum = format_checksum(hasher)
    return staged


async def _chunks(
    body: AsyncIterator[bytes], size: int, *, staged: Staged, hold: Hold, hasher: Hasher
) -> AsyncGenerator[bytes, None]:
    """``body`` cut again into ``size``-byte chunks (the last one shorter); each byte is
    counted in ``staged.size``, covered by ``hold`` and hashed before it is handed on."""
    buffer = bytearray()
    async for piece in body:
        staged.size += len(piece)
        await hold.cover(staged.size)
        hasher.update(piece)
        buffer += piece
        while len(buffer) >= size:
            data = bytes(memoryview(buffer)[:size])
            del buffer[:size]
            yield data
    if buffer:
        yield bytes(buffer)


async def _write(
    storage: Storage, staged: Staged, index: int, offset: int, data: bytes
) -> str | None:
    """Write part ``index`` of the staged upload at ``offset``; its ETag where there is one."""
    tier, upload = storage.tier(staged.tier), staged.upload
    return await storage.guard(staged.tier, lambda: tier.write(upload, index, offset, data))


async def discard(*, storage: Storage, staged: Staged) -> None:
    try:
        await storage.tier(staged.tier).abort(staged.upload)
    except Exception as exc:  # best effort: a partial object is invisible anyway
        log.warning("upload_abort_failed", tier=staged.tier, error=type(exc).__name__)


async def publish(
    *,
    session: AsyncSession,
    storage: Storage,
    tenant_id: uuid.UUID,
    name: str,
    staged: Staged,
    quota: int,
    hold: Hold,
) -> Published:
    """Claim the name (409 on a clash), check the quota exactly, make the upload visible
    atomically, record the row; the reservation ends in the same transaction."""
    await claim_name(session=session, tenant_id=tenant_id, name=name)
    await check_fits(
        session=session,
        tenant_id=tenant_id,
        nbytes=staged.size,
        quota=quota,
        name=name,
        reservation_id=hold.id,
    )
    target = storage.tier(staged.tier)
    await storage.guard(staged.tier, lambda: target.publish(staged.upload, staged.etags))
    published = await record_published(
        session=session,
        tenant_id=tenant_id,
        name=name,
        size=staged.size,
        checksum=staged.checksum,
        tier=staged.tier,
    )
    if hold.id is not None:  # last: a failure before it leaves the reservation to ``let_go``
        await release(session=session, reservation_id=hold.id)
    return published


async def clean_stale(
    *,
    sessions: async_sessionmaker[AsyncSession],
    storage: Storage,
    tenant_id: uuid.UUID,
    name: str,
    tiers: tuple[str, ...],
) -> None:
    """After the commit: remove copies of an older version (or of a deleted dataset)."""
    if not tiers:
        return
    try:
        async with sessions() as session, session.begin():
            await remove_unlisted(
                session=session, storage=storage, tenant_id=tenant_id, name=name, tiers=tiers
            )
    except Exception as exc:
        log.warning("dataset_cleanup_failed", tiers=list(tiers), error=type(exc).__name__)


async def open_for_read(
    *, session: AsyncSession, storage: Storage, tenant_id: uuid.UUID, name: str
) -> tuple[Dataset, Reader]:
    """The row and an open reader of the same version (opened under the dataset's lock)."""
    await lock_name(session=session, tenant_id=tenant_id, name=name)
    dataset = await require_dataset(session=session, tenant_id=tenant_id, name=name)
    tier = storage.tier(dataset.tier)
    key = object_key(tenant_id, name)
    reader = await storage.guard(dataset.tier, lambda: tier.open_reader(key))
    return dataset, reader


async def get_meta(*, session: AsyncSession, tenant_id: uuid.UUID, name: str) -> Dataset:
    return await require_dataset(session=session, tenant_id=tenant_id, name=name)


async def delete_dataset(
    *, session: AsyncSession, tenant_id: uuid.UUID, name: str
) -> tuple[str, ...]:
    """Delete the row; returns the tiers whose objects to remove after the commit."""
    await lock_name(session=session, tenant_id=tenant_id, name=name)
    dataset = await require_dataset(session=session, tenant_id=tenant_id, name=name)
    tiers = tuple(dataset.tiers)
    await session.delete(dataset)
    await session.flush()
    return tiers


async def list_datasets(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    prefix: str | None,
    page: PageQuery,
) -> tuple[list[Dataset], str | None]:
    query = select(Dataset).where(Dataset.tenant_id == tenant_id)
    if prefix:
        query = query.where(Dataset.name.startswith(prefix, autoescape=True))
    return await newest_first(session, query, created=Dataset.created_at, key=Dataset.id, page=page)
