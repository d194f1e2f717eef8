"""Opaque keyset cursors for newest-first lists: ``(created_at, id)``."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime

import orjson

from shared.errors import Invalid

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


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
