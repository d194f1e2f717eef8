"""Opaque keyset cursors for newest-first lists: ``(created_at, id)``."""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Query
from pydantic import AfterValidator, AwareDatetime, BeforeValidator
from sqlalchemy import Select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from shared.errors import Invalid

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# An encoded cursor is about 100 characters; anything far longer is not one of ours.
MAX_CURSOR = 256

T = TypeVar("T")


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC. A naive time, or one that has no UTC equivalent (9999-12-31T23:00
    at -05:00), is a ``ValueError``: the database would fail on it with a 500 otherwise."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("a time zone offset is required (RFC 3339)")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("out of range") from exc


def rfc3339_text(value: Any) -> Any:
    """Only text in RFC 3339's shape (a date, ``T`` or a space, a time): pydantic would take
    ``0.5`` or ``1700000000`` as seconds since 1970, which the document does not offer."""
    if not (isinstance(value, str) and RFC3339.match(value)):
        raise ValueError("an RFC 3339 date-time is required, e.g. 2026-01-01T00:00:00Z")
    return value


RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")

# An RFC 3339 instant in a query or body, normalised to UTC (``?created_after=``).
Instant = Annotated[AwareDatetime, BeforeValidator(rfc3339_text), AfterValidator(as_utc)]


def encode_cursor(created_at: datetime, id_: uuid.UUID) -> str:
    raw = orjson.dumps([created_at.isoformat(), str(id_)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """What ``encode_cursor`` wrote; anything else (another shape, a date that overflows,
    a naive time) is a 422."""
    try:
        return _parse_cursor(cursor)
    except ValueError as exc:
        raise Invalid(
            "malformed cursor", errors=[{"loc": ["query", "cursor"], "msg": "malformed cursor"}]
        ) from exc


def _parse_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, id_ = _two_strings(orjson.loads(raw))
        return as_utc(datetime.fromisoformat(at)), uuid.UUID(id_)
    except TypeError as exc:
        raise ValueError("malformed cursor") from exc


def _two_strings(value: Any) -> tuple[str, str]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ValueError("not a cursor")
    return value[0], value[1]


def _checked_cursor(cursor: str | None) -> str | None:
    if cursor:
        try:
            _parse_cursor(cursor)
        except ValueError:
            raise ValueError("malformed cursor") from None
    return cursor


LimitQuery = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description=f"page size, at most {MAX_LIMIT}")
]
# Checked at the edge, so that a malformed cursor is refused like any other bad parameter
# (``keyset_page`` checks it again for callers that take a plain string).
CursorQuery = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="the `next_cursor` of the previous page (opaque)",
    ),
    AfterValidator(_checked_cursor),
]


def created_window(
    query: Select[T],
    created: InstrumentedAttribute[datetime],
    *,
    after: datetime | None,
    before: datetime | None,
) -> Select[T]:
    """``?created_after=`` and ``?created_before=`` of a list: both bounds exclusive."""
    if after is not None:
        query = query.where(created > after)
    if before is not None:
        query = query.where(created < before)
    return query


@dataclass(frozen=True)
class PageQuery:
    """What a newest-first list is asked for: ``limit`` rows after ``cursor``, of those
    created between ``created_after`` and ``created_before`` (exclusive; ``None``: open)."""

    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


async def newest_first(
    session: AsyncSession,
    query: Select[T],
    *,
    created: InstrumentedAttribute[datetime],
    key: InstrumentedAttribute[uuid.UUID],
    page: PageQuery,
) -> tuple[list[T], str | None]:
    """The page of ``query`` that ``page`` asks for, and the cursor of the next."""
    query = created_window(query, created, after=page.created_after, before=page.created_before)
    return await keyset_page(
        session, query, created=created, key=key, limit=page.limit, cursor=page.cursor
    )


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
