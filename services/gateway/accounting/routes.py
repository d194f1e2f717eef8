"""``/v1/usage`` and ``/v1/tenant`` (a tenant's own), ``/v1/admin/usage`` and ``/v1/audit``
(the admin)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Query

from services.gateway.accounting.schemas import TenantSelf, Usage, UsageList
from services.gateway.accounting.service import GroupBy, Window, quota_use, usage_of, usage_of_all
from services.gateway.deps import PrincipalDep, SessionDep, SettingsDep
from services.gateway.routing import feature_router
from services.gateway.tenants.audit import audit, entry_out, list_audit
from services.gateway.tenants.service import get_tenant
from shared.errors import Forbidden
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT, CursorQuery, Instant

router = feature_router(
    prefix="/v1",
    tag="usage",
    errors={
        403: "wrong kind of key, a key without the `jobs:read` scope, or tenant suspended",
        422: "bad bounds or grouping",
        429: "rate limit exceeded",
        503: "the database is down; retry after Retry-After",
    },
)


@router.get("/usage")
async def get_usage(
    principal: PrincipalDep,
    session: SessionDep,
    since: Annotated[Instant | None, Query(description="RFC 3339, inclusive")] = None,
    until: Annotated[Instant | None, Query(description="RFC 3339, exclusive")] = None,
    group_by: Annotated[GroupBy | None, Query(description="split the window's usage")] = None,
) -> Usage:
    """The calling tenant's usage: CPU/GPU seconds, jobs per state, bytes stored and moved;
    with ``since``/``until``, of that window (empty when ``until`` is not later); with
    ``group_by``, split by kernel, label or day. Needs the ``jobs:read`` scope."""
    if principal.tenant_id is None:
        raise Forbidden("this endpoint needs a tenant key (the admin view is /v1/admin/usage)")
    tenant_id = principal.require_tenant("jobs:read")
    usage = await usage_of(
        session=session, tenant_id=tenant_id, window=Window(since, until), group_by=group_by
    )
    return Usage.model_validate(usage)


@router.get("/tenant")
async def get_own_tenant(
    principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> TenantSelf:
    """The calling tenant: weight, effective quotas, and its use of each quota now (any
    scope)."""
    if principal.tenant_id is None:
        raise Forbidden("this endpoint needs a tenant key (the admin view is /v1/tenants)")
    tenant = await get_tenant(session=session, tenant_id=principal.tenant_id)
    quotas = settings.quotas.effective(tenant.quotas)
    return TenantSelf.model_validate(
        {
            "id": tenant.id,
            "name": tenant.name,
            "weight": tenant.weight,
            "suspended": tenant.suspended,
            "quotas": quotas,
            "usage": await quota_use(session=session, tenant_id=tenant.id, quotas=quotas),
            "created_at": tenant.created_at,
            "updated_at": tenant.updated_at,
        }
    )


@router.get("/admin/usage")
async def get_all_usage(principal: PrincipalDep, session: SessionDep) -> UsageList:
    principal.require_admin()
    await audit(session=session, actor=principal.actor, action="usage.read")
    return UsageList.model_validate({"items": await usage_of_all(session=session)})


@router.get("/audit")
async def get_audit(
    principal: PrincipalDep,
    session: SessionDep,
    tenant_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> dict[str, Any]:
    principal.require_admin()
    rows, next_cursor = await list_audit(
        session=session, tenant_id=tenant_id, limit=limit, cursor=cursor
    )
    await audit(session=session, actor=principal.actor, action="audit.read", tenant_id=tenant_id)
    return {"items": [entry_out(e) for e in rows], "next_cursor": next_cursor}
