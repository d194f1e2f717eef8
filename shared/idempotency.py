"""``Idempotency-Key`` on ``POST /v1/jobs`` and ``POST /v1/migrations``: the same key with the
same body within the window answers with the first request's resource; the same key with
another body is a 422 (``IdempotencyKeyReused``), the first resource untouched.

A request is told apart by the SHA-256 of its canonical body: the validated model's dump
(defaults filled in) as JSON with sorted keys, so that key order, whitespace or an omitted
default do not make the same request look different."""

from __future__ import annotations

import hashlib
from typing import Annotated

import orjson
from fastapi import Header
from pydantic import BaseModel

from shared.errors import IdempotencyKeyReused

# An empty key is no key at all: refused rather than shared by every request that sends one.
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        description="the same key with the same body within 24 h returns the first response",
    ),
]


def request_hash(body: BaseModel) -> str:
    """The fingerprint stored with a keyed request (64 hex characters)."""
    canonical = orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def check_replay(*, stored: str | None, given: str) -> None:
    """Raise unless a replay carries the body its key was first used with. A row with no
    stored fingerprint (``stored`` is None) replays whatever the body."""
    if stored is not None and stored != given:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used with a different request body",
            errors=[{"loc": ["header", "idempotency-key"], "msg": "already used for another body"}],
        )
