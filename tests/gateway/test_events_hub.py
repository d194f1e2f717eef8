"""The events hub's own rules: which ticks are final (xids compared modulo 2**32), and a
stream that cannot get a first horizon (the database away) is a 503, not a hang."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from services.gateway.events import hub as hub_module
from services.gateway.events.hub import EventHub, _ended_before
from shared.errors import DependencyUnavailable
from tests.datamover.harness import free_port


def test_a_tick_is_final_once_no_older_xid_runs() -> None:
    assert _ended_before([], 100)
    assert _ended_before([100, 250], 100)  # started at or after the tick: they drew later
    assert not _ended_before([99, 250], 100)
    # across the 32-bit wrap: 2**32 - 1 comes just before 1
    assert not _ended_before([2**32 - 1], 1)
    assert _ended_before([1], 2**32 - 1)


async def test_a_first_horizon_that_never_comes_is_a_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub_module, "READY_S", 0.5)
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"  # nothing listens there

    async def connect() -> Any:
        return await asyncpg.connect(dsn, timeout=1)

    @asynccontextmanager
    async def db() -> AsyncIterator[Any]:
        conn = await connect()
        try:
            yield conn
        finally:
            await conn.close()

    hub = EventHub(db, connect, poll_s=0.1)
    stop = asyncio.Event()
    running = asyncio.ensure_future(hub.run(stop))
    try:
        with pytest.raises(DependencyUnavailable):
            await hub.ready()
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, 10)
