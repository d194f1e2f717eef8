"""Keyset cursors: what ``encode_cursor`` writes reads back; anything else is a 422."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter, ValidationError

from shared.errors import Invalid
from shared.pagination import Instant, decode_cursor, encode_cursor

ID = uuid.UUID("7b0c3b5e-8f1c-4c55-9d43-5f1a3c1f2a10")


def forge(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


def test_a_cursor_reads_back_in_utc() -> None:
    at = datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    got_at, got_id = decode_cursor(encode_cursor(at, ID))
    assert got_at == at
    assert got_at.tzinfo == UTC
    assert got_id == ID


@pytest.mark.parametrize(
    "cursor",
    [
        forge(["2026-01-01", 1]),
        forge(["2026-01-01T00:00:00+00:00", None]),
        forge(["9999-12-31T23:59:59-23:59", str(ID)]),  # no UTC equivalent
        forge(["0001-01-01T00:00:00+23:59", str(ID)]),
        forge(["2026-01-01T00:00:00", str(ID)]),  # naive
        forge(["99999-01-01T00:00:00+00:00", str(ID)]),
        forge(["2026-01-01T00:00:00+00:00", str(ID), "x"]),
        forge({"2026-01-01T00:00:00+00:00": 1, str(ID): 2}),
        forge("ab"),
        forge(7),
        forge([10**18, 10**18]),
        "zz",
        "a",
        "é",
        "%00",
    ],
)
def test_every_malformed_cursor_is_invalid(cursor: str) -> None:
    with pytest.raises(Invalid) as caught:
        decode_cursor(cursor)
    assert caught.value.errors == [{"loc": ["query", "cursor"], "msg": "malformed cursor"}]


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-01T00:00:00",  # no offset
        "99999-01-01T00:00:00Z",
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+23:59",
        "2026-13-01T00:00:00Z",
        "yesterday",
    ],
)
def test_an_instant_is_an_rfc3339_time_in_range(text: str) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(Instant).validate_python(text)


def test_an_instant_is_normalised_to_utc() -> None:
    got = TypeAdapter(Instant).validate_python("2026-01-01T02:00:00+02:00")
    assert got == datetime(2026, 1, 1, tzinfo=UTC)
    assert got.tzinfo == UTC
