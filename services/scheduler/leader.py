"""Active/standby schedulers: one leader at a time, on a PostgreSQL session advisory lock.

Every scheduler opens a connection of its own (outside the pool) and tries
``pg_try_advisory_lock(LEADER_LOCK)`` on it every ``retry_s`` (1 s). The one that holds the
lock is the leader: only it runs the loops that change jobs (dispatch with admission and
materialisation, the lease reaper, preemption, the autoscaler, webhooks, vacuum). A standby
runs what is safe anywhere: the wake-up listener, the event consumer (its events only wake a
dispatcher; the leader's own dispatch interval covers a wake-up the standby took), the outbox
relay and the monitor's gauges.

The lock lasts as long as its session. A ``kill -9`` of the leader closes its socket and
PostgreSQL frees the lock at once; a standby takes it at its next try (about ``retry_s``).
A PostgreSQL restart ends every session: each scheduler steps down if it led and tries
again, and one of them wins.

Stepping down comes first. While leading, the lock's connection is checked every ``check_s``
(``SELECT 1`` with a timeout of ``lease_s - check_s``); a check that fails, times out or
finds the connection closed stops the leader's loops at once (the pass in progress is
cancelled, its transaction rolled back) before anything else. A network cut leaves the
server holding the session until its TCP keepalives give up: the session sets them
(``tcp_keepalives_*``, ``tcp_user_timeout``) so that PostgreSQL drops it after about
``SERVER_DROP_S`` of silence, well after the cut-off leader has stopped (``lease_s``).

``/metrics`` shows ``stratus_scheduler_leader`` (1 on the leader, 0 on a standby) and
``stratus_scheduler_leadership_changes_total``; ``GET /leader`` answers the role, and
PostgreSQL names the holder (``application_name`` ``stratus-scheduler-leader@HOST``, in
``pg_stat_activity`` joined to ``pg_locks``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Gauge

from shared.db import advisory
from shared.db.wakeup import listener_connect
from shared.logging import get_logger
from shared.settings import PostgresSettings
from shared.telemetry import REGISTRY

log = get_logger(__name__)

# the key of the lock (shared.db.advisory: one key per use)
LEADER_LOCK = advisory.LEADER

# what PostgreSQL's side of the lock's connection is told: after this much silence from the
# leader (keepalives idle, then probes, or unacknowledged data) the session and its lock go
KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_COUNT = 3
SERVER_DROP_S = KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_COUNT

LEADER = Gauge(
    "stratus_scheduler_leader",
    "1 while this scheduler holds the leader lock (runs dispatch, reaper, ...), else 0",
    registry=REGISTRY,
)
CHANGES = Counter(
    "stratus_scheduler_leadership_changes_total",
    "Times this scheduler became leader (gained) or stepped down (lost)",
    ["change"],
    registry=REGISTRY,
)

Connect = Callable[[], Awaitable[Any]]  # a new asyncpg connection, outside any pool


def holder_name() -> str:
    """The ``application_name`` of a scheduler's lock connection (it names the host)."""
    return f"stratus-scheduler-leader@{socket.gethostname()}"[:63]


def lock_connect(settings: PostgresSettings) -> Connect:
    """New connections for the lock, with the pool's settings but outside the pool (a
    session lock lasts as long as its connection), named by ``holder_name``."""
    return listener_connect(settings, application_name=holder_name())


class Leadership:
    """Tries the leader lock until ``stop``; calls ``on_gain`` when it gets it and
    ``on_loss(grace_s)`` before letting it go (``grace_s`` 0 when the connection was lost:
    the loops are cancelled at once; ``shutdown_grace_s`` when the scheduler stops)."""

    def __init__(
        self,
        connect: Connect,
        *,
        on_gain: Callable[[], Awaitable[None]],
        on_loss: Callable[[float], Awaitable[None]],
        retry_s: float = 1.0,
        check_s: float = 1.0,
        lease_s: float = 3.0,
        shutdown_grace_s: float = 5.0,
        key: int = LEADER_LOCK,
    ) -> None:
        if lease_s <= check_s:
            raise ValueError("lease_s must exceed check_s")
        self.connect = connect
        self.on_gain = on_gain
        self.on_loss = on_loss
        self.retry_s = retry_s
        self.check_s = check_s
        self.lease_s = lease_s
        self.shutdown_grace_s = shutdown_grace_s
        self.key = key
        self.is_leader = False
        self.since: float | None = None  # time.time() of the last change
        self.backend_pid: int | None = None  # the lock connection's server pid
        self.changed = asyncio.Event()  # set at each change (tests wait on it)
        LEADER.set(0)

    def describe(self) -> dict[str, Any]:
        return {
            "role": "leader" if self.is_leader else "standby",
            "since": self.since,
            "host": socket.gethostname(),
            "lock": self.key,
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set; steps down (with ``shutdown_grace_s``) before it returns."""
        failures = 0
        while not stop.is_set():
            try:
                await self._session(stop)
                failures = 0
            except Exception as exc:  # the database away, the connection lost: try again
                failures += 1
                (log.warning if failures == 1 else log.debug)(
                    "leader_lock_connection_lost", error=type(exc).__name__, detail=str(exc)
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_s)

    async def _session(self, stop: asyncio.Event) -> None:
        conn = await asyncio.wait_for(self.connect(), self.lease_s * 2)
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _c: lost.set())
            self.backend_pid = conn.get_server_pid()
            with contextlib.suppress(Exception):  # a Unix socket has no TCP keepalives
                await conn.execute(
                    f"SET tcp_keepalives_idle = {KEEPALIVE_IDLE_S};"
                    f"SET tcp_keepalives_interval = {KEEPALIVE_INTERVAL_S};"
                    f"SET tcp_keepalives_count = {KEEPALIVE_COUNT};"
                    f"SET tcp_user_timeout = {SERVER_DROP_S * 1000}",
                    timeout=self.lease_s,
                )
            while not await conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", self.key, timeout=self.lease_s
            ):
                if await _wait_any(stop, lost, within_s=self.retry_s):
                    return  # stopping or lost, still a standby: nothing to hand over
            try:
                await self._gain()
                while True:
                    if await _wait_any(stop, lost, within_s=self.check_s):
                        if stop.is_set():
                            return
                        raise ConnectionError("the leader lock's connection was closed")
                    await conn.fetchval("SELECT 1", timeout=self.lease_s - self.check_s)
            finally:
                # before the lock can go: stop the loops (at once unless stopping)
                await self._step_down(stopping=stop.is_set())
        finally:
            self.backend_pid = None
            try:
                await asyncio.wait_for(conn.close(), 2.0)  # releases the lock
            except Exception:
                conn.terminate()

    async def _gain(self) -> None:
        self.is_leader = True
        self.since = time.time()
        LEADER.set(1)
        CHANGES.labels("gained").inc()
        self.changed.set()
        log.info("leader_elected", lock=self.key, backend_pid=self.backend_pid)
        await self.on_gain()

    async def _step_down(self, *, stopping: bool) -> None:
        """Stop the loops (within ``shutdown_grace_s`` when the scheduler stops, else at
        once); a stop is logged as news, a loss as a warning."""
        if not self.is_leader:
            return
        grace_s = self.shutdown_grace_s if stopping else 0.0
        try:
            await self.on_loss(grace_s)
        finally:
            self.is_leader = False
            self.since = time.time()
            LEADER.set(0)
            CHANGES.labels("lost").inc()
            self.changed.set()
            if stopping:
                log.info("leader_released", lock=self.key, grace_s=grace_s)
            else:
                log.warning("leader_stepped_down", lock=self.key, grace_s=grace_s)


async def _wait_any(*events: asyncio.Event, within_s: float) -> bool:
    """Wait until one of ``events`` is set or ``within_s`` passes; True when one is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
    return bool(done)
