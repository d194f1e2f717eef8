"""Opaque keyset cursors for newest-first lists: ``(created_at, id)``."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import TypeVar

import orjson
from sqlalchemy import Select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from shared.errors import Invalid

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

T = TypeVar("T")


def encode_cursor(created_at: datetime, id_: uuid.UUID) -> str:
    raw = orjson.dumps([created_at.isoformat(), str(id_)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, id_ = orjson.loads(raw)
        return datetime.fromisoformat(at), uuid.UUID(id_)
    except (ValueError, TypeError) as exc:
        raise Invalid(
            "malformed cursor", errors=[{"loc": ["query", "cursor"], "msg": "malformed cursor"}]
        ) from exc


async def keyset_page(
    session: AsyncSession,
    query: Select[T],
    *,
    created: InstrumentedAttribute[datetime],
    key: InstrumentedAttribute[uuid.UUID],
    limit: int,
    cursor: str | None,
) -> tuple[list[T], str | None]:
    """One newest-first page of ``query`` after ``cursor``, and the cursor of the next."""
    if cursor:
        at, id_ = decode_cursor(cursor)
        query = query.where(tuple_(created, key) < tuple_(at, id_))
    query = query.order_by(created.desc(), key.desc()).limit(limit + 1)
    rows = list((await session.execute(query)).scalars())
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, encode_cursor(getattr(last, created.key), getattr(last, key.key))
