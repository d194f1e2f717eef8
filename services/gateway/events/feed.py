"""The events feed's rows: how they are read (fixed SQL on plain asyncpg) and what a
subscriber receives (``text/event-stream`` frames).

A row is a ``job_events`` row (kind ``state``, ``progress`` or ``checkpoint``) with its job's
array and index, a ``migration_events`` row (kind ``migration``) or a ``workflow_events`` row (kind
``workflow``); all share one id sequence.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from shared.jobs.arrays import public_id

# The SSE ``event:`` of each kind of row.
EVENT_NAMES = {
    "state": "job.state",
    "progress": "job.progress",
    "checkpoint": "job.checkpoint",
    "migration": "migration.state",
    "workflow": "workflow.state",
}

_COLUMNS = """
    SELECT e.id, e.tenant_id, e.kind, e.job_id, j.array_id, j.array_index, e.to_state,
           e.progress, e.reason, e.attempt, e.at, e.step, e.checkpoints, e.counts
    FROM job_events e JOIN jobs j ON j.id = e.job_id
"""
_MIGRATION_COLUMNS = """
    SELECT m.id, m.tenant_id, 'migration', m.migration_id, NULL::uuid, NULL::int, m.state,
           NULL::real, NULL::text, NULL::int, m.at, NULL::bigint, NULL::int, NULL::jsonb
    FROM migration_events m
"""
_WORKFLOW_COLUMNS = """
    SELECT w.id, w.tenant_id, 'workflow', w.workflow_id, NULL::uuid, NULL::int, w.state,
           NULL::real, NULL::text, NULL::int, w.at, NULL::bigint, NULL::int, NULL::jsonb
    FROM workflow_events w
"""

# The hub's read: every listened tenant's rows in ``($1, $2]``, at most $4, by id.
# $3 the tenants.
HUB_READ = f"""
    {_COLUMNS} WHERE e.id > $1 AND e.id <= $2 AND e.tenant_id = ANY($3::uuid[])
    UNION ALL
    {_MIGRATION_COLUMNS} WHERE m.id > $1 AND m.id <= $2 AND m.tenant_id = ANY($3::uuid[])
    UNION ALL
    {_WORKFLOW_COLUMNS} WHERE w.id > $1 AND w.id <= $2 AND w.tenant_id = ANY($3::uuid[])
    ORDER BY 1 LIMIT $4
"""

# A subscriber's catch-up: one tenant's rows in ``($1, $2]``, at most $4, by id; with $5,
# only the job $5 and, for an array, its elements, or the workflow $5 (no migrations).
SUBSCRIBER_READ = f"""
    {_COLUMNS} WHERE e.id > $1 AND e.id <= $2 AND e.tenant_id = $3
                 AND ($5::uuid IS NULL OR e.job_id = $5 OR j.array_id = $5)
    UNION ALL
    {_MIGRATION_COLUMNS} WHERE m.id > $1 AND m.id <= $2 AND m.tenant_id = $3 AND $5 IS NULL
    UNION ALL
    {_WORKFLOW_COLUMNS} WHERE w.id > $1 AND w.id <= $2 AND w.tenant_id = $3
                          AND ($5::uuid IS NULL OR w.workflow_id = $5)
    ORDER BY 1 LIMIT $4
"""


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    tenant_id: uuid.UUID
    kind: str
    subject: uuid.UUID  # the job's (element's) id, or the migration's
    array_id: uuid.UUID | None
    array_index: int | None
    state: str
    progress: float | None
    reason: str | None
    attempt: int | None
    at: datetime
    step: int | None = None  # kind checkpoint: the step saved or resumed from
    checkpoints: int | None = None  # kind checkpoint: the job's count after it
    # kind progress of an array (a chunk's flush): its counts then (JSON, decoded or not)
    counts: str | dict[str, int] | None = None

    def concerns(self, job: uuid.UUID | None) -> bool:
        """Whether a stream narrowed to ``job`` (a job, an array or an element's row id;
        None: not narrowed) shows this row."""
        if job is None:
            return True
        return self.kind != "migration" and (self.subject == job or self.array_id == job)


def _rows(records: Sequence[Any]) -> list[Row]:
    return [Row(*r) for r in records]


async def read_rows(
    conn: Any, *, tenants: list[uuid.UUID], after: int, upto: int, limit: int
) -> list[Row]:
    return _rows(await conn.fetch(HUB_READ, after, upto, tenants, limit))


async def read_tenant(
    conn: Any, *, tenant_id: uuid.UUID, after: int, upto: int, limit: int, job: uuid.UUID | None
) -> list[Row]:
    return _rows(await conn.fetch(SUBSCRIBER_READ, after, upto, tenant_id, limit, job))


def payload(row: Row) -> dict[str, Any]:
    """The ``data:`` of ``row``'s event."""
    at = row.at.isoformat()
    if row.kind == "migration":
        return {"migration_id": str(row.subject), "state": row.state, "at": at}
    if row.kind == "workflow":
        return {"workflow_id": str(row.subject), "state": row.state, "at": at}
    data: dict[str, Any] = {"job_id": str(row.subject)}
    if row.array_id is not None and row.array_index is not None:
        data["job_id"] = public_id(row.array_id, row.array_index)
        data["array_id"] = str(row.array_id)
        data["array_index"] = row.array_index
    if row.kind == "progress":
        data["progress"] = row.progress
        if row.counts is not None:  # an array's: its elements per state, and its state
            counts = row.counts
            data["counts"] = orjson.loads(counts) if isinstance(counts, str) else counts
            data["state"] = row.state
    elif row.kind == "checkpoint":  # the job runs; reason: saved or resumed
        data["state"] = row.state
        data["checkpoint"] = row.reason
        data["step"] = row.step
        data["checkpoints"] = row.checkpoints
    else:
        data["state"] = row.state
        data["reason"] = row.reason
    data["attempt"] = row.attempt
    data["at"] = at
    return data


def frame(row: Row) -> bytes:
    """``row`` as one ``text/event-stream`` event."""
    name = EVENT_NAMES.get(row.kind, row.kind)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (row.id, name.encode(), orjson.dumps(payload(row)))


KEEP_ALIVE = b": keep-alive\n\n"
