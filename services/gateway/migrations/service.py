"""Migration use cases for the gateway. Functions take ``session`` as a keyword and never
commit. Recording a request (and its event) is ``shared.storage.migrations.request_migration``,
which the scheduler calls too (stage-in)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Migration
from shared.errors import NotFound
from shared.pagination import PageQuery, newest_first
from shared.storage.migrations import MigrationState


async def get_migration(
    *, session: AsyncSession, tenant_id: uuid.UUID, migration_id: uuid.UUID
) -> Migration:
    migration = (
        await session.execute(
            select(Migration).where(Migration.id == migration_id, Migration.tenant_id == tenant_id)
        )
    ).scalar_one_or_none()
    if migration is None:
        raise NotFound("migration not found")
    return migration


async def list_migrations(
    *,
    session: AsyncSession,
    tenant_id: uuid.UUID,
    state: MigrationState | None,
    dataset: str | None,
    page: PageQuery,
) -> tuple[list[Migration], str | None]:
    query = select(Migration).where(Migration.tenant_id == tenant_id)
    if state is not None:
        query = query.where(Migration.state == state.value)
    if dataset is not None:
        query = query.where(Migration.dataset == dataset)
    return await newest_first(
        session, query, created=Migration.created_at, key=Migration.id, page=page
    )
