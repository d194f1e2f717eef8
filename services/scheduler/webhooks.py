"""The scheduler's webhook loop: send the deliveries that a trigger on ``jobs`` wrote in the
transaction of each state change (migration 0021), at least once.

Each pass claims the due deliveries in one statement (``FOR UPDATE SKIP LOCKED``, so two
schedulers never take the same row) and pushes their next attempt past the request's timeout:
the claim is a lease, committed before anything is sent. A scheduler that dies mid-send leaves
the row to be sent again once the lease ends (hence at least once: a receiver dedupes on the
``Stratus-Delivery`` header, the delivery's id, also ``id`` in the body). The outcomes of a
pass are recorded in one statement: a 2xx is delivered; anything else (a 3xx too: redirects
are not followed, a timeout, a refused destination, no secret to sign with) is tried again
after a doubling backoff until ``retry_for_s`` after the delivery was written, then given up
(``failed``, with the last status or error).

The destination is resolved and checked again before each attempt (``shared.webhooks``), and
the request goes to the address that was checked (the URL's host stays in ``Host`` and in TLS's
server name), so a name that now resolves elsewhere cannot reach a refused address.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.raw import raw_connection
from shared.events import utcnow
from shared.logging import get_logger
from shared.settings import WebhookSettings
from shared.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    Allowed,
    Refused,
    SecretUnreadable,
    literal,
    parse_url,
    resolve,
    signature,
    unseal,
)

log = get_logger(__name__)

CLAIM = """
WITH due AS (
    SELECT id FROM webhook_deliveries
    WHERE state = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
FROM due WHERE d.id = due.id
RETURNING d.id, d.tenant_id, d.url, d.payload::text AS payload, d.attempts, d.created_at,
          (SELECT s.sealed FROM webhook_secrets s WHERE s.tenant_id = d.tenant_id) AS sealed
"""

RECORD = """
UPDATE webhook_deliveries d SET
    state = CASE WHEN r.ok THEN 'delivered' WHEN r.give_up THEN 'failed' ELSE 'pending' END,
    finished_at = CASE WHEN r.ok OR r.give_up THEN now() END,
    next_attempt_at = CASE WHEN r.ok OR r.give_up THEN d.next_attempt_at
                           ELSE now() + make_interval(secs => r.delay) END,
    last_status = r.status,
    last_error = r.error
FROM unnest($1::uuid[], $2::bool[], $3::bool[], $4::float8[], $5::int4[], $6::text[])
    AS r(id, ok, give_up, delay, status, error)
WHERE d.id = r.id AND d.state = 'pending'
"""

PRUNE_EVERY_S = 60.0
PRUNE_BATCH = 10_000
PRUNE = """
WITH gone AS (
    DELETE FROM webhook_deliveries WHERE id IN (
        SELECT id FROM webhook_deliveries
        WHERE state <> 'pending' AND finished_at < now() - make_interval(secs => $1)
        LIMIT $2
    )
    RETURNING 1
)
SELECT count(*)::int FROM gone
"""


@dataclass(frozen=True)
class Due:
    id: uuid.UUID
    tenant_id: uuid.UUID
    url: str
    payload: str
    attempts: int
    created_at: datetime
    sealed: bytes | None


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status: int | None = None
    error: str | None = None


class Deliverer:
    """Sends the due deliveries, ``settings.concurrency`` at a time."""

    def __init__(self, engine: AsyncEngine, settings: WebhookSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.allowed = Allowed.parse(settings.allow)
        self.pruned_at = -math.inf

    def backoff_s(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed try: doubling, capped, with jitter."""
        s = self.settings
        base: float = min(s.backoff_s * 2.0 ** min(attempts - 1, 30), s.backoff_max_s)
        return base * (0.75 + random.random() / 2)

    async def deliver_once(self) -> int:
        """One pass: claim, send, record. How many deliveries were tried."""
        lease_s = self.settings.timeout_s + self.settings.resolve_timeout_s + 30
        async with raw_connection(self.engine) as conn:
            rows = await conn.fetch(CLAIM, self.settings.concurrency, lease_s)
        if not rows:
            return 0
        due = [Due(**dict(r)) for r in rows]
        async with self._client() as client:
            outcomes = await asyncio.gather(*(self.send(client, d) for d in due))
        await self._record(due, outcomes)
        return len(due)

    def _client(self) -> httpx.AsyncClient:
        # No proxy from the environment: the request must reach the address that was checked.
        return httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=self.settings.timeout_s,
            limits=httpx.Limits(max_connections=self.settings.concurrency),
        )

    async def send(self, client: httpx.AsyncClient, due: Due) -> Outcome:
        """One POST of ``due``, signed with its tenant's secret; never raises (what goes wrong
        is this delivery's failure, tried again later, never its batch's)."""
        try:
            return await self._send(client, due)
        except Exception as exc:
            return Outcome(ok=False, error=f"{type(exc).__name__}: not sent")

    async def _send(self, client: httpx.AsyncClient, due: Due) -> Outcome:
        try:
            if due.sealed is None:
                return Outcome(ok=False, error="the tenant has no webhook secret")
            operator_key = self.settings.secret_key.get_secret_value()
            secret = unseal(due.sealed, due.tenant_id, operator_key)
            dest = parse_url(due.url)
            addresses = await resolve(dest, self.allowed, timeout_s=self.settings.resolve_timeout_s)
        except (Refused, SecretUnreadable) as exc:
            return Outcome(ok=False, error=str(exc))
        body = due.payload.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "stratus-webhooks/1",
            "Host": dest.host_header,
            SIGNATURE_HEADER: signature(secret, int(time.time()), body),
            DELIVERY_HEADER: str(due.id),
        }
        named = dest.scheme == "https" and literal(dest.host) is None
        extensions = {"sni_hostname": dest.host} if named else {}
        url = dest.url_for(addresses[0])
        try:
            async with (
                asyncio.timeout(self.settings.timeout_s),
                # only the status matters: the answer's body is never read (it may be huge)
                client.stream(
                    "POST", url, content=body, headers=headers, extensions=extensions
                ) as answer,
            ):
                status = answer.status_code
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            return Outcome(ok=False, error=f"{type(exc).__name__}: no answer")
        if 200 <= status < 300:
            return Outcome(ok=True, status=status)
        return Outcome(ok=False, status=status, error=f"HTTP {status}")

    async def _record(self, due: list[Due], outcomes: list[Outcome]) -> None:
        now = utcnow()
        retry_for = timedelta(seconds=self.settings.retry_for_s)
        delays = [self.backoff_s(d.attempts) for d in due]
        give_up = [
            not o.ok and now + timedelta(seconds=delay) > d.created_at + retry_for
            for d, o, delay in zip(due, outcomes, delays, strict=True)
        ]
        async with raw_connection(self.engine) as conn:
            await conn.execute(
                RECORD,
                [d.id for d in due],
                [o.ok for o in outcomes],
                give_up,
                delays,
                [o.status for o in outcomes],
                [None if o.ok else (o.error or "")[:500] for o in outcomes],
            )
        for d, o, gave_up in zip(due, outcomes, give_up, strict=True):
            if not o.ok:
                log.info(
                    "webhook_failed" if gave_up else "webhook_retry",
                    delivery=str(d.id),
                    attempt=d.attempts,
                    status=o.status,
                    error=o.error,
                )

    async def step(self) -> int:
        """The loop's step: passes while they find a full batch (a backlog), 20 at most; and
        once a minute, the finished deliveries older than ``keep_s`` deleted."""
        total = 0
        for _ in range(20):
            n = await self.deliver_once()
            total += n
            if n < self.settings.concurrency:
                break
        if time.monotonic() - self.pruned_at >= PRUNE_EVERY_S:
            await self.prune()
        return total

    async def prune(self) -> int:
        """Delete delivered and given-up deliveries finished more than ``keep_s`` ago, a
        bounded batch; how many."""
        self.pruned_at = time.monotonic()
        async with raw_connection(self.engine) as conn:
            deleted: int = await conn.fetchval(PRUNE, self.settings.keep_s, PRUNE_BATCH)
        return deleted
