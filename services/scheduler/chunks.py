"""The dispatch pass's step for array chunks (``shared.jobs.chunks``): the chosen chunks
marked dispatched to a device and their ``ChunkDispatched`` events staged in the outbox, in
one statement, as ``service._send`` does for jobs. A chunk is one candidate of its tenant
(one worker slot), whatever its number of elements."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.scheduler.fairshare import Candidate
from shared.events import ChunkDispatched, Event
from shared.jobs.chunks import cancel_chunks, requeue_expired
from shared.jobs.store import session_fetch

# A chunk another scheduler locked (SKIP LOCKED) or dispatched meanwhile is left out, and so
# is its event. $1 chunk ids, $2 device, $3 routing key, $4 message ids, $5 bodies.
_SEND = """
WITH locked AS (
    SELECT id FROM array_chunks
    WHERE id = ANY($1::uuid[]) AND dispatched_at IS NULL AND worker IS NULL
    FOR UPDATE SKIP LOCKED
), sent AS (
    UPDATE array_chunks c SET dispatched_at = now(), device = $2
    FROM locked WHERE c.id = locked.id
    RETURNING c.id
), staged AS (
    INSERT INTO outbox (message_id, routing_key, body)
    SELECT e.message_id, $3, e.body
    FROM unnest($1::uuid[], $4::uuid[], $5::bytea[]) AS e(chunk_id, message_id, body)
    JOIN sent ON sent.id = e.chunk_id
)
SELECT id FROM sent
"""


async def send_chunks(conn: Any, chosen: list[Candidate], device: str) -> list[Event]:
    """Dispatch the chosen chunks (candidates whose ``job_id`` is a chunk's id) to
    ``device``'s queue; return the events of those sent."""
    if not chosen:
        return []
    events = [
        ChunkDispatched(
            tenant_id=c.tenant_id,
            chunk_id=c.job_id,
            device="cuda" if device == "cuda" else "cpu",
            kernel=c.kernel,
        )
        for c in chosen
    ]
    rows = await conn.fetch(
        _SEND,
        [e.chunk_id for e in events],
        device,
        events[0].routing_key,
        [e.event_id for e in events],
        [e.to_bytes() for e in events],
    )
    sent = {r[0] for r in rows}
    return [e for e in events if e.chunk_id in sent]


# Chunks dispatched more than $1 seconds ago that no worker claimed (the message or its
# worker was lost): sent again by the next pass.
_REDISPATCH = """
UPDATE array_chunks SET dispatched_at = NULL, device = NULL
WHERE worker IS NULL AND dispatched_at < now() - make_interval(secs => $1::float8)
RETURNING id
"""


async def redispatch_unclaimed_chunks(fetch: Any, *, after_s: float) -> int:
    """Send again the chunks dispatched more than ``after_s`` ago that no worker claimed."""
    return len(await fetch(_REDISPATCH, after_s))


async def reap_chunks(*, session: AsyncSession, redispatch_after_s: float) -> None:
    """The reaper's steps for chunks: a lost worker's chunks re-queued or failed
    (``requeue_expired``), cancelled arrays' chunks that no live worker holds dropped
    (``cancel_chunks``), and chunks dispatched long ago but never claimed sent again."""
    fetch = session_fetch(session)
    await requeue_expired(fetch)
    await cancel_chunks(fetch)
    await redispatch_unclaimed_chunks(fetch, after_s=redispatch_after_s)
