"""The job row, defined once: the ``jobs`` table of ``shared.db.models.Job``.

The statements that read or write jobs on plain asyncpg (the gateway's group commit and
idempotent replay, the worker's claim) take their column lists from here, built once at
import, and read rows by name. A ``Columns`` names some columns of the table under the names
of a model's fields, so that the model (``JobOut``, ``Claim``) decides what is read or
written and a column the model gains is read or written with no other edit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import BigInteger, Boolean, DateTime, Float, Integer, SmallInteger, String, Table
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.types import TypeEngine

from shared.db.models import Job

JOBS: Table = Job.metadata.tables[Job.__tablename__]

# The element type of an array parameter for each column type (``unnest($1::uuid[], ...)``).
# Strings go as text, not varchar(n): an explicit cast to varchar(n) would cut a long value
# where the insert must refuse it. JSON goes as text and is cast in the statement, so that no
# codec of the connection is involved.
_ARRAY_TYPES: tuple[tuple[type[TypeEngine[Any]], str], ...] = (
    (UUID, "uuid"),
    (JSONB, "text"),
    (String, "text"),
    (SmallInteger, "int2"),
    (BigInteger, "int8"),
    (Integer, "int4"),
    (Boolean, "bool"),
    (Float, "float8"),
)


def _array_type(column: Any) -> str:
    kind = column.type
    if isinstance(kind, DateTime):
        return "timestamptz" if kind.timezone else "timestamp"
    for python_type, sql in _ARRAY_TYPES:
        if isinstance(kind, python_type):
            return sql
    raise TypeError(f"no array type for {column.table.name}.{column.name} ({kind!r})")


def stored(fields: Iterable[str], table: Table = JOBS) -> tuple[str, ...]:
    """Those of ``fields`` that are columns of ``table``, in the order given."""
    return tuple(f for f in fields if f in table.c)


class Columns:
    """Columns of ``table`` under the names of a model's ``fields`` (``renamed`` maps a field
    to its column where the names differ): the SQL that reads or writes them and the values of
    a row by those names. JSON columns travel as text both ways."""

    def __init__(
        self,
        fields: Iterable[str],
        *,
        renamed: Mapping[str, str] | None = None,
        table: Table = JOBS,
    ) -> None:
        renamed = renamed or {}
        self.fields = tuple(fields)
        self.columns = tuple(renamed.get(f, f) for f in self.fields)
        unknown = [c for c in self.columns if c not in table.c]
        if unknown:
            raise ValueError(f"not columns of {table.name}: {', '.join(unknown)}")
        if len(set(self.columns)) < len(self.columns):
            raise ValueError(f"a column named twice: {', '.join(self.columns)}")
        self.table = table
        self.json = frozenset(
            f for f, c in zip(self.fields, self.columns, strict=True) if _is_json(table, c)
        )

    def select(self) -> str:
        """The select list: each column under its field's name, JSON as text."""
        items = []
        for field, column in zip(self.fields, self.columns, strict=True):
            value = f"{column}::text" if field in self.json else column
            items.append(value if value == field else f"{value} AS {field}")
        return ", ".join(items)

    def names(self) -> str:
        """The column names, for an ``INSERT INTO`` list or an alias list."""
        return ", ".join(self.columns)

    def unnest(self, first: int = 1) -> str:
        """``unnest($first::type[], ...)``: one array parameter a column, in order."""
        arrays = (
            f"${first + i}::{_array_type(self.table.c[c])}[]" for i, c in enumerate(self.columns)
        )
        return f"unnest({', '.join(arrays)})"

    def parameter(self, field: str, first: int = 1) -> str:
        """The parameter that carries ``field``'s array in ``unnest(first)``."""
        return f"${first + self.fields.index(field)}"

    def values(self, alias: str) -> str:
        """The columns of ``alias`` (an unnest of ``unnest``'s), JSON cast back from text."""
        return ", ".join(
            f"CAST({alias}.{c} AS jsonb)" if f in self.json else f"{alias}.{c}"
            for f, c in zip(self.fields, self.columns, strict=True)
        )

    def arguments(self, rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        """The arrays of ``unnest``: one list a column, of each row's value by field name."""
        dumps = orjson.dumps
        return [
            [None if r[f] is None else dumps(r[f]).decode() for r in rows]
            if f in self.json
            else [r[f] for r in rows]
            for f in self.fields
        ]

    def decode(self, record: Any) -> dict[str, Any]:
        """A row of ``select`` by field name, JSON decoded: an asyncpg ``Record``, or a
        SQLAlchemy ``Row`` (``session_fetch``) through its mapping."""
        named = getattr(record, "_mapping", record)
        values = {f: named[f] for f in self.fields}
        for f in self.json:
            if values[f] is not None:
                values[f] = orjson.loads(values[f])
        return values

    def attributes(self, row: object) -> dict[str, Any]:
        """The fields of a loaded ORM row (``Job``), by the same names."""
        return {f: getattr(row, c) for f, c in zip(self.fields, self.columns, strict=True)}


def _is_json(table: Table, column: str) -> bool:
    return isinstance(table.c[column].type, JSONB)
