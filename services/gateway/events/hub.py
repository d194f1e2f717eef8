"""One listener per gateway process for the events feed: it learns which event ids are final,
reads what is new once for every live subscriber, and wakes whoever waits on a tenant.

Ids come from ``job_events``' sequence (``migration_events`` share it) and are drawn before
their transaction commits, so they do not become visible in id order: handing out id 7 while
the transaction holding id 5 is still open would lose 5 for good. The hub hands out ids up
to its *horizon*: every id at or below it is final (committed, or never will be). It finds
it with ticks: a tick reads the sequence's last value ``seq``, then the next xid to be
assigned; every transaction that drew an id up to ``seq`` had its xid before the tick
(migration 0018 makes each inserting statement take its xid before it draws), so below that
next xid. Once no transaction of the database with an xid before it is running any more
(``pg_stat_activity``), all of them have ended, and ``seq`` is final. (A snapshot's ``xmax``
is not the next xid: it is one past the newest xid that *ended*, and a transaction above it
may be running.) (An id's own xid compared with the oldest one running is not enough either:
a transaction with an older xid may draw its id after one with a newer xid, commit first,
and pass the test while the newer one still holds a lower id.)

Wake-ups: one NOTIFY per commit that inserted events (triggers of migration 0018) on
``CHANNEL``, a ``WakeListener`` of the hub's own, and a slow safety poll (``poll_s``). While
a tick is not final yet the hub checks again every ``settle_s`` (one statement).
The hub works only while someone listens: live subscribers or waiters.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram

from services.gateway.events.feed import Row, frame, read_rows
from shared.db.wakeup import Connect, WakeListener
from shared.errors import DependencyUnavailable
from shared.logging import get_logger
from shared.telemetry import REGISTRY

log = get_logger(__name__)

CHANNEL = "stratus_events"  # migration 0018's triggers notify it

_RUNNING = """
    SELECT coalesce(array_agg(backend_xid::text::bigint) FILTER (WHERE backend_xid IS NOT NULL),
                    '{}')
    FROM pg_stat_activity WHERE datname = current_database()
"""
# A tick in one statement: the sequence's last value, then (in the projection, after the scan
# that read it) the next xid to be assigned (``age`` counts from it when the statement has no
# xid of its own), and the xids running in this database (transactions elsewhere in the
# cluster never insert events, so a long one there holds nothing up). Xids are 32-bit here,
# compared modulo 2**32.
_TICK = f"""
SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END,
       (3 + age('3'::xid)::bigint) % 4294967296,
       ({_RUNNING})
FROM job_events_id_seq
"""  # noqa: S608 (constants only)


def _ended_before(running: list[int], xid: int) -> bool:
    """Whether every transaction with an xid before ``xid`` has ended, given those running."""
    return all((x - xid) % (1 << 32) < (1 << 31) for x in running)


DELIVERY_LAG = Histogram(
    "stratus_events_delivery_lag_seconds",
    "Event stream lag: from a change's time to its hand-out to the live streams (newest row of "
    "each read)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)

# A live subscriber that has this many rows waiting (a slow reader) is dropped from the live
# feed and reads from the database again, at its own pace.
MAX_BACKLOG = 10_000

# Ticks kept while none is final (a long transaction holds them): beyond this many the newest
# is replaced, so that each check stays short; all become final together when it ends.
MAX_TICKS = 64
READY_S = 10.0  # how long a new stream waits for a first horizon before a 503

Db = Callable[[], AbstractAsyncContextManager[Any]]  # a guarded plain asyncpg connection


@dataclass(frozen=True)
class Batch:
    """A tenant's new rows, their frames made once for all its subscribers (``joined``: all
    of them, for a stream that is not narrowed), and the horizon they reach."""

    rows: list[Row]
    frames: list[bytes]
    joined: bytes
    upto: int


@dataclass(eq=False)
class Live:
    """A subscriber fed by the hub: batches of its tenant's rows (only those with rows: every
    id up to a batch's ``upto`` that concerns the tenant has been delivered)."""

    tenant_id: uuid.UUID
    batches: asyncio.Queue[Batch] = field(default_factory=asyncio.Queue)
    backlog: int = 0
    dropped: bool = False


class EventHub:
    def __init__(
        self,
        db: Db,
        connect: Connect,
        *,
        poll_s: float = 2.0,
        settle_s: float = 0.005,
        batch: int = 1000,
    ) -> None:
        self.db = db
        self.poll_s = poll_s
        self.settle_s = settle_s
        self.batch = batch
        self.horizon = -1  # unknown until the first tick is final
        self._ready = asyncio.Event()
        self._delivering = False
        self._wake = asyncio.Event()
        self._ticks: list[tuple[int, int]] = []  # (seq, next xid), not final yet
        self._live: dict[uuid.UUID, set[Live]] = defaultdict(set)
        self._waiters: dict[uuid.UUID, set[asyncio.Future[None]]] = defaultdict(set)
        self.listener = WakeListener(connect, self.wake, channel=CHANNEL)

    def wake(self) -> None:
        self._wake.set()

    def _active(self) -> bool:
        return bool(self._live or self._waiters) or not self._ready.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set: the listener, and the hub's loop."""
        listening = asyncio.ensure_future(self.listener.run(stop))
        try:
            await self._loop(stop)
        finally:
            await listening

    async def _loop(self, stop: asyncio.Event) -> None:
        """Steps: a new tick when woken (a NOTIFY, or the safety poll), a snapshot only while
        a tick waits to be final. While no one listens, only the poll steps, so that the
        horizon stays recent and a first subscriber reads little."""
        failures = 0
        tick = True
        while not stop.is_set():
            if tick or self._ticks:
                try:
                    await self._step(new_tick=tick)
                    failures = 0
                except Exception as exc:  # the database away: the next step tries again
                    failures += 1
                    (log.warning if failures == 1 else log.debug)(
                        "events_hub_step_failed", error=type(exc).__name__, detail=str(exc)
                    )
            settling = bool(self._ticks) and self._active() and not failures
            wait_s = self.settle_s if settling else self.poll_s
            try:
                await asyncio.wait_for(self._wake.wait(), wait_s)
                tick = self._active()
            except TimeoutError:
                tick = not settling
            self._wake.clear()

    async def _step(self, *, new_tick: bool) -> None:
        async with self.db() as conn:
            if new_tick:
                seq, next_xid, running = await conn.fetchrow(_TICK)
                tick = (int(seq), int(next_xid))
                if len(self._ticks) >= MAX_TICKS:  # a long transaction: coarsen the newest
                    self._ticks[-1] = tick
                elif not self._ticks or self._ticks[-1][0] != tick[0]:
                    self._ticks.append(tick)
            else:
                running = await conn.fetchval(_RUNNING)
            running = list(running)
            final = [seq for seq, next_xid in self._ticks if _ended_before(running, next_xid)]
            if not final:
                return
            self._ticks = [t for t in self._ticks if not _ended_before(running, t[1])]
            horizon = max(final)
            if horizon > self.horizon:
                if self._ready.is_set():
                    await self._deliver(conn, self.horizon, horizon)
                self.horizon = horizon
                self._ready.set()

    async def _deliver(self, conn: Any, after: int, upto: int) -> None:
        """The rows in ``(after, upto]`` of the tenants someone listens to, to them. No one
        attaches meanwhile (``attach``): the tenants are read once, at the start."""
        tenants = list(self._live.keys() | self._waiters.keys())
        if not tenants:
            return
        self._delivering = True
        try:
            await self._read_and_hand_out(conn, tenants, after, upto)
        finally:
            self._delivering = False

    async def _read_and_hand_out(
        self, conn: Any, tenants: list[uuid.UUID], after: int, upto: int
    ) -> None:
        by_tenant: dict[uuid.UUID, list[Row]] = defaultdict(list)
        start = after
        newest: Row | None = None
        while True:
            rows = await read_rows(conn, tenants=tenants, after=start, upto=upto, limit=self.batch)
            for r in rows:
                by_tenant[r.tenant_id].append(r)
            newest = rows[-1] if rows else newest
            if len(rows) < self.batch:
                break
            start = rows[-1].id
        if newest is not None:  # from the change's time to its hand-out to the streams
            DELIVERY_LAG.observe(max(0.0, time.time() - newest.at.timestamp()))
        for tenant_id, subs in self._live.items():
            new = by_tenant.get(tenant_id)
            if not new:
                continue
            frames = [frame(r) for r in new]
            batch = Batch(new, frames, b"".join(frames), upto)
            for sub in subs:
                sub.batches.put_nowait(batch)
                sub.backlog += len(new)
                if sub.backlog > MAX_BACKLOG:
                    sub.dropped = True
        for tenant_id in by_tenant:
            for waiter in self._waiters.get(tenant_id, ()):
                if not waiter.done():
                    waiter.set_result(None)
        for tenant_id, subs in list(self._live.items()):
            subs -= {s for s in subs if s.dropped}
            if not subs:
                del self._live[tenant_id]

    async def ready(self) -> int:
        """The horizon, once the hub knows one; 503 if it does not within ``READY_S`` (the
        database away since the gateway started)."""
        if not self._ready.is_set():
            self.wake()
            try:
                await asyncio.wait_for(self._ready.wait(), READY_S)
            except TimeoutError:
                raise DependencyUnavailable(
                    "The events feed is not ready; retry later.", retry_after=2
                ) from None
        return self.horizon

    def attach(self, tenant_id: uuid.UUID, position: int) -> Live | None:
        """A live feed of ``tenant_id``'s rows after the horizon, if ``position`` is not
        below it (else read up to the horizon first, and try again; None also while the hub
        hands out a batch). A position past the horizon (seen on a gateway whose horizon is
        ahead) attaches too: the subscriber skips the rows up to it."""
        if position < self.horizon or self._delivering:
            return None
        sub = Live(tenant_id)
        self._live[tenant_id].add(sub)
        self.wake()  # what committed while the subscriber was catching up
        return sub

    def detach(self, sub: Live) -> None:
        subs = self._live.get(sub.tenant_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._live[sub.tenant_id]

    async def wait_for_change(self, tenant_id: uuid.UUID, timeout_s: float) -> bool:
        """Wait until an event of ``tenant_id`` (a job's state or progress, a migration's
        state) is final, at most ``timeout_s`` seconds: True if one came, False on timeout.
        Whoever waits reads what changed from the tables afterwards."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters[tenant_id]
        waiters.add(waiter)
        self.wake()
        try:
            await asyncio.wait_for(waiter, timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            waiters.discard(waiter)
            if not waiters:
                self._waiters.pop(tenant_id, None)
