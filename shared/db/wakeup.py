"""The scheduler's wake-up as a PostgreSQL NOTIFY, sent in the transaction that made the work.

A submitted job and a finished attempt only tell the scheduler "what can be dispatched has
changed"; the scheduler reads the truth from the tables. Such a wake-up needs no outbox row,
relay, broker message and acknowledgement: the statement that inserts the jobs (or records
the attempts) calls ``pg_notify`` once, whatever the number of rows, and PostgreSQL delivers
it to the listeners when, and only if, the transaction commits (a NOTIFY repeated in one
transaction is delivered once anyway).

A notification is not durable: one sent while no scheduler listens is gone. The scheduler's
periodic dispatch pass (``STRATUS_DISPATCH_INTERVAL_S``) stays the safety net, and a
listener that (re)connects wakes its scheduler at once, for what it may have missed.

Events that someone must act on keep their outbox row and broker message: ``job.dispatch``
(the worker claims it), ``job.cancelled`` (the worker stops the job), ``job.retry`` (comes
back after a delay), ``migration.*``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.logging import get_logger
from shared.settings import PostgresSettings

log = get_logger(__name__)

CHANNEL = "stratus_scheduler"
SUBMITTED = "job.submitted"  # the payloads: what happened, for logs only
FINISHED = "job.finished"


def notify_once(rows: str, what: str) -> str:
    """A CTE body that notifies the scheduler once if the CTE ``rows`` has any row. Its
    one row must be read by the statement's final SELECT (``FROM ..., <name>``), or
    PostgreSQL never evaluates it; ``count(*)`` keeps that one row when ``rows`` is empty."""
    # names and payloads of this module and its callers only
    notify_sql = f"SELECT pg_notify('{CHANNEL}', '{what}')"
    return f"SELECT count(*) AS n FROM ({notify_sql} FROM {rows} LIMIT 1) AS once"  # noqa: S608


async def notify(session: AsyncSession, what: str) -> None:
    """Wake the scheduler when ``session``'s transaction commits."""
    await session.execute(
        text("SELECT pg_notify(:channel, :what)"), {"channel": CHANNEL, "what": what}
    )


Connect = Callable[[], Awaitable[Any]]  # a new asyncpg connection of the listener's own


def listener_connect(settings: PostgresSettings, *, application_name: str) -> Connect:
    """A plain asyncpg connection with the settings of the service's pool, outside it: a
    LISTEN lasts as long as its connection, which a pool would hand to others."""

    async def connect() -> Any:
        return await asyncpg.connect(
            settings.url(driver="postgresql"),
            timeout=settings.connect_timeout_s,
            ssl=settings.ssl,
            server_settings={"application_name": application_name},
        )

    return connect


# The longest wait between two tries to listen again: the dispatch loop's own interval keeps
# jobs moving meanwhile, so a slow retry delays only the wake-ups.
MAX_RETRY_S = 15.0


def retry_delay(failures: int, retry_s: float, cap_s: float = MAX_RETRY_S) -> float:
    """Seconds before the next try after ``failures`` failed ones in a row: ``retry_s``,
    then doubling, at most ``cap_s`` (never below ``retry_s``)."""
    doubled: float = retry_s * 2.0 ** max(0, failures - 1)
    return max(retry_s, min(cap_s, doubled))


class WakeListener:
    """LISTENs on ``channel`` (``CHANNEL``, the scheduler's, unless told) on a connection of
    its own and calls ``wake`` for each notification, and once each time it (re)connects.
    When the connection drops it connects again every ``retry_s``; ``check_s`` is how often
    an idle connection is checked (a dead peer that closed nothing is found by the check's
    failure)."""

    def __init__(
        self, connect: Connect, wake: Callable[[], None], *, retry_s: float = 1.0,
        check_s: float = 30.0, channel: str = CHANNEL,
    ) -> None:  # fmt: skip
        self.connect = connect
        self.channel = channel
        self.wake = wake
        self.retry_s = retry_s
        self.check_s = check_s
        self.connected = asyncio.Event()  # set while LISTENing (tests wait on it)
        self.backend_pid: int | None = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self.wake()

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set. A lost connection is one warning; while the database stays
        away the tries back off (``retry_delay``) and say so only at debug level."""
        failures = 0
        while not stop.is_set():
            try:
                await self._listen(stop)
            except Exception as exc:  # the database away, the connection lost: try again
                failures = 1 if self.connected.is_set() else failures + 1
                report = log.warning if failures == 1 else log.debug
                report(
                    "wake_listener_lost",
                    error=type(exc).__name__,
                    detail=str(exc),
                    failures=failures,
                )
            finally:
                self.connected.clear()
                self.backend_pid = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), retry_delay(failures, self.retry_s))

    async def _listen(self, stop: asyncio.Event) -> None:
        conn = await self.connect()
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(self.channel, self._on_notify)
            self.backend_pid = conn.get_server_pid()
            self.connected.set()
            log.info("wake_listener_listening", channel=self.channel)
            self.wake()  # what was notified while no one listened
            while not stop.is_set():
                if lost.is_set() or conn.is_closed():
                    raise ConnectionError("the listening connection was closed")
                waiters = [asyncio.ensure_future(e.wait()) for e in (stop, lost)]
                _, pending = await asyncio.wait(waiters, timeout=self.check_s,
                                                return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                for w in pending:
                    w.cancel()
                if not stop.is_set() and not lost.is_set():
                    await conn.fetchval("SELECT 1", timeout=self.check_s)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)
