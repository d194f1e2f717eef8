"""The ``storage_bytes`` quota, exact under any concurrency.

What a tenant uses is what its datasets store (each copy on each tier counts) plus what its
writers in progress hold: reservations (``storage_reservations``) taken before or while bytes
are written (an upload, a job's output, a copy to another tier). Every check and every change
of what is held runs under one per-tenant lock (a transaction-scoped advisory lock), so two
writers can never both be granted the same free bytes, whatever their dataset names.

A writer reserves (``reserve``, or ``Hold`` for bytes that arrive as a stream), writes, then
in the transaction that records the dataset checks once more (``check_fits``) and
``release``s its reservation last, so that its bytes turn into stored bytes in the same
commit. A writer that fails ``release``s;
one that dies leaves a reservation that expires. Functions take ``session`` as a keyword and
never commit, except ``Hold``, whose steps are short transactions of their own (no database
connection is held while bytes stream).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import ColumnElement, Text, any_, bindparam, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Dataset, StorageReservation
from shared.errors import QuotaExceeded
from shared.events import utcnow

# Long enough for a slow upload of a large file; a reservation whose writer died stops
# counting after this. ``check_fits`` runs again at the end, so an expired one can never
# exceed the quota.
RESERVATION_TTL_S = 3600.0


@dataclass(frozen=True)
class Reservation:
    id: uuid.UUID
    tenant_id: uuid.UUID
    nbytes: int


async def lock_tenant_storage(*, session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """Serialise every quota decision (and name-clash check) of one tenant until commit."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"storage:{tenant_id}"},
    )


def _copies() -> ColumnElement[int]:
    return Dataset.size * func.jsonb_array_length(Dataset.tiers)


async def stored_bytes(*, session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """Bytes of the tenant's datasets: each verified copy on each tier counts."""
    total = await session.scalar(
        select(func.coalesce(func.sum(_copies()), 0)).where(Dataset.tenant_id == tenant_id)
    )
    return int(total or 0)


async def replaced_bytes(*, session: AsyncSession, tenant_id: uuid.UUID, name: str) -> int:
    """What overwriting ``name`` frees: every copy of its current version."""
    total = await session.scalar(
        select(func.coalesce(func.sum(_copies()), 0)).where(
            Dataset.tenant_id == tenant_id, Dataset.name == name
        )
    )
    return int(total or 0)


async def replaced_bytes_of(
    *, session: AsyncSession, tenant_id: uuid.UUID, names: Sequence[str]
) -> int:
    """``replaced_bytes`` of every name in ``names``, in one query (an array's outputs)."""
    total = await session.scalar(
        select(func.coalesce(func.sum(_copies()), 0)).where(
            Dataset.tenant_id == tenant_id,
            Dataset.name == any_(bindparam("names", list(names), type_=ARRAY(Text))),
        )
    )
    return int(total or 0)


def _live() -> ColumnElement[bool]:
    return or_(StorageReservation.expires_at.is_(None), StorageReservation.expires_at > utcnow())


async def reserved_bytes(
    *, session: AsyncSession, tenant_id: uuid.UUID, exclude: uuid.UUID | None = None
) -> int:
    """Bytes held by the tenant's writers in progress (``exclude``: not this reservation)."""
    query = select(func.coalesce(func.sum(StorageReservation.bytes), 0)).where(
        StorageReservation.tenant_id == tenant_id, _live()
    )
    if exclude is not None:
        query = query.where(StorageReservation.id != exclude)
    return int(await session.scalar(query) or 0)


async def storage_used(*, session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """Stored and reserved bytes: what the quota is checked against."""
    return await stored_bytes(session=session, tenant_id=tenant_id) + await reserved_bytes(
        session=session, tenant_id=tenant_id
    )


def _refuse(quota: int, used: int) -> QuotaExceeded:
    left = max(quota - used, 0)
    return QuotaExceeded(f"this would exceed the storage_bytes quota ({left} bytes left)")


async def reserve(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    nbytes: int,
    quota: int,
    replacing: int = 0,
    reservation_id: uuid.UUID | None = None,
    ttl_s: float | None = RESERVATION_TTL_S,
) -> Reservation:
    """Hold ``nbytes`` against ``quota`` or raise ``QuotaExceeded``. ``replacing``: bytes the
    write frees when it lands (the version it overwrites). ``ttl_s=None``: held until
    released (a migration's copy, released when the migration ends)."""
    await lock_tenant_storage(session=session, tenant_id=tenant_id)
    await session.execute(
        delete(StorageReservation).where(
            StorageReservation.tenant_id == tenant_id, StorageReservation.expires_at <= utcnow()
        )
    )
    used = await storage_used(session=session, tenant_id=tenant_id)
    if used - replacing + nbytes > quota:
        raise _refuse(quota, used - replacing)
    reservation = Reservation(reservation_id or uuid.uuid4(), tenant_id, nbytes)
    session.add(
        StorageReservation(
            id=reservation.id,
            tenant_id=tenant_id,
            bytes=nbytes,
            expires_at=None if ttl_s is None else utcnow() + timedelta(seconds=ttl_s),
        )
    )
    await session.flush()
    return reservation


async def grow(
    *,
    session: AsyncSession,
    reservation: Reservation,
    nbytes: int,
    quota: int,
    replacing: int = 0,
    at_least: int | None = None,
) -> Reservation:
    """Add up to ``nbytes`` to a reservation (at least ``at_least``, all by default): as
    much as the quota allows, or ``QuotaExceeded``. Its expiry starts again."""
    tenant_id = reservation.tenant_id
    await lock_tenant_storage(session=session, tenant_id=tenant_id)
    used = await storage_used(session=session, tenant_id=tenant_id)
    free = quota - (used - replacing)
    needed = nbytes if at_least is None else at_least
    if needed > free:
        raise _refuse(quota, used - replacing)
    granted = max(min(nbytes, free), needed)
    total = await session.scalar(
        update(StorageReservation)
        .where(StorageReservation.id == reservation.id)
        .values(
            bytes=StorageReservation.bytes + granted,
            expires_at=utcnow() + timedelta(seconds=RESERVATION_TTL_S),
        )
        .returning(StorageReservation.bytes)
    )
    if total is None:  # expired and swept: start again
        return await reserve(
            session=session,
            tenant_id=tenant_id,
            nbytes=reservation.nbytes + granted,
            quota=quota,
            replacing=replacing,
            reservation_id=reservation.id,
        )
    return Reservation(reservation.id, tenant_id, int(total))


async def check_fits(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    nbytes: int,
    quota: int,
    name: str | None = None,
    reservation_id: uuid.UUID | None = None,
) -> None:
    """Whether ``nbytes`` more stored bytes (dataset ``name``, replacing its current version)
    fit, counting every reservation but ``reservation_id``: ``QuotaExceeded`` if not. The
    tenant stays locked until commit, so the answer holds for the rest of the transaction."""
    await lock_tenant_storage(session=session, tenant_id=tenant_id)
    replacing = 0
    if name is not None:
        replacing = await replaced_bytes(session=session, tenant_id=tenant_id, name=name)
    used = await stored_bytes(session=session, tenant_id=tenant_id) + await reserved_bytes(
        session=session, tenant_id=tenant_id, exclude=reservation_id
    )
    if used - replacing + nbytes > quota:
        raise _refuse(quota, used - replacing)


async def release(*, session: AsyncSession, reservation_id: uuid.UUID) -> None:
    """Give the bytes back (a missing reservation is not an error)."""
    await session.execute(delete(StorageReservation).where(StorageReservation.id == reservation_id))


class Hold:
    """A reservation for bytes that arrive as a stream: ``cover(total)`` before writing the
    bytes up to ``total`` grows it in steps (one short transaction each), ``release`` gives
    back what was held when the write fails. The quota is the one read when it was made."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        tenant_id: uuid.UUID,
        quota: int,
        replacing: int = 0,
        step: int = 2**20,
    ) -> None:
        self._sessions = sessions
        self.tenant_id = tenant_id
        self.quota = quota
        self.replacing = replacing
        self.step = step
        self.reservation: Reservation | None = None

    @property
    def id(self) -> uuid.UUID | None:
        return None if self.reservation is None else self.reservation.id

    @property
    def held(self) -> int:
        return 0 if self.reservation is None else self.reservation.nbytes

    async def cover(self, total: int) -> None:
        """Make sure ``total`` bytes are held, or raise ``QuotaExceeded``."""
        if total <= self.held:
            return
        async with self._sessions() as session, session.begin():
            if self.reservation is None:
                self.reservation = await reserve(
                    session=session,
                    tenant_id=self.tenant_id,
                    nbytes=total,
                    quota=self.quota,
                    replacing=self.replacing,
                )
            else:
                self.reservation = await grow(
                    session=session,
                    reservation=self.reservation,
                    nbytes=max(total - self.held, self.step),
                    at_least=total - self.held,
                    quota=self.quota,
                    replacing=self.replacing,
                )

    async def release(self) -> None:
        if self.reservation is None:
            return
        async with self._sessions() as session, session.begin():
            await release(session=session, reservation_id=self.reservation.id)
        self.reservation = None
