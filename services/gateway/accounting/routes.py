"""``/v1/usage`` (a tenant's own), ``/v1/admin/usage`` and ``/v1/audit`` (the admin)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.gateway.accounting.schemas import Usage, UsageList
from services.gateway.deps import PrincipalDep, SessionDep
from services.tenant.audit import audit, entry_out, list_audit
from services.tenant.usage import usage_of, usage_of_all
from shared.errors import Forbidden
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT, CursorQuery
from shared.problems import problem_responses

router = APIRouter(prefix="/v1", tags=["usage"])

ERRORS = problem_responses(
    {
        401: "missing or unknown API key",
        403: "wrong kind of key, or tenant suspended",
        429: "rate limit exceeded",
        503: "the database is down; retry after Retry-After",
    }
)


@router.get("/usage", responses=ERRORS)
async def get_usage(principal: PrincipalDep, session: SessionDep) -> Usage:
    """The calling tenant's usage: CPU/GPU seconds, jobs per state, bytes stored and moved."""
    if principal.tenant_id is None:
        raise Forbidden("this endpoint needs a tenant key (the admin view is /v1/admin/usage)")
    return Usage.model_validate(await usage_of(session=session, tenant_id=principal.tenant_id))


@router.get("/admin/usage", responses=ERRORS)
async def get_all_usage(principal: PrincipalDep, session: SessionDep) -> UsageList:
    principal.require_admin()
    await audit(session=session, actor=principal.actor, action="usage.read")
    return UsageList.model_validate({"items": await usage_of_all(session=session)})


@router.get("/audit", responses=ERRORS)
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
