"""Tenants and API keys: use cases. Take ``session`` as a keyword, never commit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.tenants.schemas import KeyCreate, TenantCreate, TenantPatch
from shared.db.models import ApiKey, Tenant
from shared.db.outbox import add_event
from shared.errors import Conflict, NotFound
from shared.events import TenantChanged, utcnow
from shared.pagination import keyset_page
from shared.security import SCOPES, generate_key, hash_key, visible_prefix


async def create_tenant(*, session: AsyncSession, data: TenantCreate) -> Tenant:
    tenant_id = uuid.uuid4()
    now = utcnow()
    row = (
        await session.execute(
            insert(Tenant)
            .values(
                id=tenant_id,
                name=data.name,
                weight=data.weight,
                quotas=data.quotas.model_dump(exclude_none=True),
                suspended=False,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=[Tenant.name])
            .returning(Tenant.id)
        )
    ).scalar_one_or_none()
    if row is None:
        raise Conflict(f"a tenant named {data.name!r} exists")
    return await get_tenant(session=session, tenant_id=tenant_id)


async def get_tenant(*, session: AsyncSession, tenant_id: uuid.UUID) -> Tenant:
    tenant = await session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound("tenant not found")
    return tenant


async def list_tenants(
    *, session: AsyncSession, limit: int, cursor: str | None
) -> tuple[list[Tenant], str | None]:
    """One page of tenants, newest first, and the cursor of the next."""
    query = select(Tenant)
    return await keyset_page(
        session, query, created=Tenant.created_at, key=Tenant.id, limit=limit, cursor=cursor
    )


async def patch_tenant(*, session: AsyncSession, tenant_id: uuid.UUID, data: TenantPatch) -> Tenant:
    tenant = await get_tenant(session=session, tenant_id=tenant_id)
    if data.weight is not None:
        tenant.weight = data.weight
    if data.quotas is not None:
        # the fields given replace the stored ones; null returns one to the platform default
        merged = {**tenant.quotas, **data.quotas.model_dump(exclude_unset=True)}
        tenant.quotas = {k: v for k, v in merged.items() if v is not None}
    if data.suspended is not None:
        tenant.suspended = data.suspended
    tenant.updated_at = utcnow()
    await session.flush()
    await add_event(session, TenantChanged(tenant_id=tenant_id, what="updated"))
    return tenant


@dataclass(frozen=True)
class NewKey:
    row: ApiKey
    secret: str


async def create_key(
    *, session: AsyncSession, tenant_id: uuid.UUID, data: KeyCreate, key_secret: str
) -> NewKey:
    await get_tenant(session=session, tenant_id=tenant_id)
    secret = generate_key()
    row = ApiKey(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        name=data.name,
        prefix=visible_prefix(secret),
        key_hash=hash_key(secret, key_secret),
        scopes=list(data.scopes) if data.scopes is not None else list(SCOPES),
        created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    return NewKey(row, secret)


async def list_keys(
    *, session: AsyncSession, tenant_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[ApiKey], str | None]:
    """One page of the tenant's keys (revoked ones too), newest first, and the cursor of the
    next; a tenant that does not exist is a 404."""
    await get_tenant(session=session, tenant_id=tenant_id)
    query = select(ApiKey).where(ApiKey.tenant_id == tenant_id)
    return await keyset_page(
        session, query, created=ApiKey.created_at, key=ApiKey.id, limit=limit, cursor=cursor
    )


async def revoke_key(*, session: AsyncSession, tenant_id: uuid.UUID, key_id: uuid.UUID) -> None:
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .returning(ApiKey.id)
    )
    if result.scalar_one_or_none() is None:
        raise NotFound("key not found")
    await add_event(session, TenantChanged(tenant_id=tenant_id, what="key_revoked"))


@dataclass(frozen=True)
class KeyOwner:
    key_id: uuid.UUID
    tenant_id: uuid.UUID
    scopes: frozenset[str]
    suspended: bool
    quotas: dict[str, Any]


async def find_key(*, session: AsyncSession, key_hash: bytes) -> KeyOwner | None:
    row = (
        await session.execute(
            select(ApiKey.id, ApiKey.tenant_id, ApiKey.scopes, Tenant.suspended, Tenant.quotas)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )
    ).one_or_none()
    if row is None:
        return None
    return KeyOwner(row.id, row.tenant_id, frozenset(row.scopes), row.suspended, row.quotas)
