"""The scheduler's wake-ups (``shared.db.wakeup``: NOTIFY on one channel) as a test sees them,
on a connection of its own."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import asyncpg

from shared.db.wakeup import CHANNEL


class Wakeups:
    """``async with Wakeups(dsn) as seen``: ``await seen.take()`` gives the payloads notified
    since the last take, in order. A notification committed before ``take`` is called is
    always in it: the listening backend sends what is pending before it answers a query."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.payloads: list[str] = []
        self.conn: Any = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.payloads.append(payload)

    async def __aenter__(self) -> Wakeups:
        self.conn = await asyncpg.connect(self.dsn)
        await self.conn.add_listener(CHANNEL, self._on_notify)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.conn.close()

    async def take(self) -> list[str]:
        for _ in range(2):
            await self.conn.fetchval("SELECT 1")
            await asyncio.sleep(0)  # asyncpg calls listeners soon after, not at once
        taken, self.payloads = self.payloads, []
        return taken
