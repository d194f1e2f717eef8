"""``/v1/tenants`` (platform admin): tenants and their API keys."""

from __future__ import annotations

import uuid

from fastapi import Request, Response

from services.gateway.deps import PrincipalDep, SessionDep, SettingsDep
from services.gateway.routing import feature_router
from services.gateway.tenants import service
from services.gateway.tenants.audit import audit
from services.gateway.tenants.schemas import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    TenantCreate,
    TenantList,
    TenantOut,
    TenantPatch,
)
from shared.db.models import ApiKey, Tenant
from shared.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery

router = feature_router(
    prefix="/v1/tenants",
    tag="tenants",
    errors={
        403: "not the admin key",
        404: "no such tenant or key",
        409: "a tenant with this name exists",
        422: "validation failed",
        503: "the database is down; retry after Retry-After",
    },
)


def tenant_out(tenant: Tenant, settings: SettingsDep) -> TenantOut:
    return TenantOut(
        id=tenant.id,
        name=tenant.name,
        weight=tenant.weight,
        quotas=settings.quotas.effective(tenant.quotas),
        suspended=tenant.suspended,
        created_at=tenant.created_at,
        updated_at=tenant.updated_at,
    )


@router.post("", status_code=201)
async def create_tenant(
    body: TenantCreate, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> TenantOut:
    principal.require_admin()
    tenant = await service.create_tenant(session=session, data=body)
    await audit(
        session=session,
        actor=principal.actor,
        action="tenant.created",
        tenant_id=tenant.id,
        target=tenant.name,
        details=body.model_dump(mode="json"),
    )
    return tenant_out(tenant, settings)


@router.get("")
async def list_tenants(
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> TenantList:
    """Tenants, newest first, a page at a time (``next_cursor``)."""
    principal.require_admin()
    rows, next_cursor = await service.list_tenants(session=session, limit=limit, cursor=cursor)
    await audit(session=session, actor=principal.actor, action="tenants.read")
    return TenantList(items=[tenant_out(t, settings) for t in rows], next_cursor=next_cursor)


@router.get("/{tenant_id}")
async def get_tenant(
    tenant_id: uuid.UUID, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> TenantOut:
    principal.require_admin()
    tenant = await service.get_tenant(session=session, tenant_id=tenant_id)
    await audit(session=session, actor=principal.actor, action="tenant.read", tenant_id=tenant_id)
    return tenant_out(tenant, settings)


@router.patch("/{tenant_id}")
async def patch_tenant(
    tenant_id: uuid.UUID,
    request: Request,
    body: TenantPatch,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
) -> TenantOut:
    principal.require_admin()
    before = dict((await service.get_tenant(session=session, tenant_id=tenant_id)).quotas)
    tenant = await service.patch_tenant(session=session, tenant_id=tenant_id, data=body)
    await audit(
        session=session,
        actor=principal.actor,
        action="tenant.updated",
        tenant_id=tenant_id,
        details={
            "change": body.model_dump(mode="json", exclude_unset=True),
            "quotas_before": before,
            "quotas_after": tenant.quotas,
        },
    )
    # This gateway applies the change (quotas, suspension) from the next request on (the
    # transaction commits before the answer is sent); the others forget their cached keys on
    # the tenant.changed event.
    request.app.state.authenticator.invalidate()
    return tenant_out(tenant, settings)


@router.post("/{tenant_id}/keys", status_code=201)
async def create_key(
    tenant_id: uuid.UUID,
    body: KeyCreate,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
) -> KeyCreated:
    principal.require_admin()
    new = await service.create_key(
        session=session,
        tenant_id=tenant_id,
        data=body,
        key_secret=settings.key_secret.get_secret_value(),
    )
    await audit(
        session=session,
        actor=principal.actor,
        action="key.created",
        tenant_id=tenant_id,
        target=str(new.row.id),
        details={"name": new.row.name, "prefix": new.row.prefix, "scopes": new.row.scopes},
    )
    return KeyCreated(
        id=new.row.id,
        key=new.secret,
        prefix=new.row.prefix,
        name=new.row.name,
        scopes=new.row.scopes,
        created_at=new.row.created_at,
    )


def key_out(key: ApiKey) -> KeyOut:
    return KeyOut(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        scopes=key.scopes,
        state="active" if key.revoked_at is None else "revoked",
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )


@router.get("/{tenant_id}/keys")
async def list_keys(
    tenant_id: uuid.UUID,
    principal: PrincipalDep,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> KeyList:
    """The tenant's API keys, revoked ones too, newest first, a page at a time
    (``next_cursor``): never a key's secret nor its hash."""
    principal.require_admin()
    rows, next_cursor = await service.list_keys(
        session=session, tenant_id=tenant_id, limit=limit, cursor=cursor
    )
    await audit(session=session, actor=principal.actor, action="keys.read", tenant_id=tenant_id)
    return KeyList(items=[key_out(k) for k in rows], next_cursor=next_cursor)


@router.delete("/{tenant_id}/keys/{key_id}", status_code=204)
async def revoke_key(
    tenant_id: uuid.UUID, key_id: uuid.UUID, principal: PrincipalDep, session: SessionDep
) -> Response:
    principal.require_admin()
    await service.revoke_key(session=session, tenant_id=tenant_id, key_id=key_id)
    await audit(
        session=session,
        actor=principal.actor,
        action="key.revoked",
        tenant_id=tenant_id,
        target=str(key_id),
    )
    return Response(status_code=204)
