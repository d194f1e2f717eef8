"""The audit log: who did what to which tenant, and when. Entries are written in the
transaction of the change (or read) they record, so a rolled-back change leaves none."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import AuditEntry
from shared.events import utcnow
from shared.pagination import decode_cursor, encode_cursor

BIGINT_MAX = 2**63 - 1


async def audit(
    *,
    session: AsyncSession,
    actor: str,
    action: str,
    tenant_id: uuid.UUID | None = None,
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    await session.execute(
        insert(AuditEntry).values(
            at=utcnow(),
            actor=actor,
            action=action,
            tenant_id=tenant_id,
            target=target,
            details=details or {},
        )
    )


async def list_audit(
    *, session: AsyncSession, tenant_id: uuid.UUID | None, limit: int, cursor: str | None
) -> tuple[list[AuditEntry], str | None]:
    query = select(AuditEntry)
    if tenant_id is not None:
        query = query.where(AuditEntry.tenant_id == tenant_id)
    if cursor:
        at, marker = decode_cursor(cursor)
        # Entries have BIGINT ids: a larger marker (not one this list wrote) stands for the
        # largest, which keeps the page where it would be rather than failing in the database.
        marker_id = min(marker.int, BIGINT_MAX)
        query = query.where(tuple_(AuditEntry.at, AuditEntry.id) < tuple_(at, marker_id))
    query = query.order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit + 1)
    rows = list((await session.execute(query)).scalars())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].at, uuid.UUID(int=rows[-1].id))
    return rows, next_cursor


def entry_out(e: AuditEntry) -> dict[str, Any]:
    at: datetime = e.at
    return {
        "id": e.id,
        "at": at,
        "actor": e.actor,
        "action": e.action,
        "tenant_id": str(e.tenant_id) if e.tenant_id else None,
        "target": e.target,
        "details": e.details,
    }
