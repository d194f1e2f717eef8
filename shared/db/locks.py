"""Row locks for the state machines: the one function that writes a row's state locks it
first (``SELECT … FOR UPDATE``), so concurrent transitions of one row run one after the
other, each on the state the previous one left."""

from __future__ import annotations

import uuid
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Job, Migration
from shared.errors import NotFound

Row = TypeVar("Row", Job, Migration)


async def lock_row(
    session: AsyncSession,
    model: type[Row],
    row_id: uuid.UUID,
    *,
    tenant_id: uuid.UUID | None = None,
) -> Row:
    """The row ``row_id`` of ``model`` (of ``tenant_id`` when given), locked and read anew
    (not the session's cached copy); ``NotFound`` when there is none."""
    query = (
        select(model)
        .where(model.id == row_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if tenant_id is not None:
        query = query.where(model.tenant_id == tenant_id)
    row = (await session.execute(query)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"{model.__tablename__.removesuffix('s')} not found")
    return row
