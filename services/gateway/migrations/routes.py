"""``/v1/migrations``: parse, call one service function, map the result."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import Query, Response

from services.gateway.deps import PrincipalDep, SessionDep, SettingsDep
from services.gateway.migrations import service
from services.gateway.migrations.schemas import MigrationCreate, MigrationList, MigrationOut
from services.gateway.routing import PageDep, feature_router
from shared import tracing
from shared.db.models import Migration
from shared.idempotency import IdempotencyKey, request_hash
from shared.storage.migrations import MigrationMode, MigrationState, request_migration
from shared.storage.names import MAX_NAME, NAME_CHARS_PATTERN

router = feature_router(
    prefix="/v1",
    tag="migrations",
    errors={
        403: "key lacks the scope, or tenant suspended",
        404: "no such dataset or migration for this tenant",
        409: "the dataset is already on that tier",
        413: "a copy over the tenant's storage_bytes quota",
        422: "validation failed (unknown tier, invalid name)",
        429: "rate limit exceeded",
        503: "a dependency is down; retry after Retry-After",
    },
)


def migration_out(migration: Migration) -> MigrationOut:
    return MigrationOut.model_validate(migration, from_attributes=True)


@router.post("/migrations", status_code=202)
async def create_migration(
    body: MigrationCreate,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> MigrationOut:
    start_ns = time.time_ns()
    tenant_id = principal.require_tenant("data:write")
    requested = await request_migration(
        session=session,
        tenant_id=tenant_id,
        dataset=body.dataset,
        to_tier=body.to_tier,
        mode=MigrationMode(body.mode),
        tiers=settings.storage.tiers().keys(),
        idempotency_key=idempotency_key,
        request_hash=None if idempotency_key is None else request_hash(body),
        idempotency_window_s=settings.idempotency_window_s,
        quota=int(principal.quotas["storage_bytes"]),
    )
    if not requested.replayed:  # the root of the migration's trace, if tracing is on
        tracing.submitted(requested.migration.id, start_ns, "POST /v1/migrations")
    response.headers["Location"] = f"/v1/migrations/{requested.migration.id}"
    if requested.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return migration_out(requested.migration)


@router.get("/migrations/{migration_id}")
async def get_migration(
    migration_id: uuid.UUID, principal: PrincipalDep, session: SessionDep
) -> MigrationOut:
    tenant_id = principal.require_tenant("data:read")
    return migration_out(
        await service.get_migration(session=session, tenant_id=tenant_id, migration_id=migration_id)
    )


@router.get("/migrations")
async def list_migrations(
    principal: PrincipalDep,
    session: SessionDep,
    page: PageDep,
    state: MigrationState | None = None,
    dataset: Annotated[
        str | None,
        Query(max_length=MAX_NAME, pattern=NAME_CHARS_PATTERN, description="of this dataset"),
    ] = None,
) -> MigrationList:
    tenant_id = principal.require_tenant("data:read")
    rows, next_cursor = await service.list_migrations(
        session=session, tenant_id=tenant_id, state=state, dataset=dataset, page=page
    )
    return MigrationList(items=[migration_out(m) for m in rows], next_cursor=next_cursor)
