"""The submission writer (services/gateway/jobs/writer.py) driven directly, on a gateway's
database: a connection lost mid-statement fails the whole batch and leaves nothing, a
cancelled request does not disturb its batch, a bad row is its own error only, and stopping
writes what waits and refuses the rest."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from services.gateway.deps import raw_db
from services.gateway.jobs.writer import WRITTEN, JobWriter, NewJob
from shared.errors import DependencyUnavailable
from shared.events import utcnow
from shared.settings import CommonSettings
from tests.gateway.conftest import make_tenant
from tests.gateway.test_group_commit import Gateway, job_ids, own_gateway, submitted_events
from tests.gateway.test_jobs_api import MC


class _Conn:
    """An asyncpg connection whose batch statement runs under ``around(conn, run)``."""

    def __init__(self, conn: Any, around: Any) -> None:
        self._conn = conn
        self._around = around

    async def fetch(self, query: str, *args: Any) -> Any:
        assert not self._conn.is_in_transaction()  # the statement is a transaction of its own
        return await self._around(self._conn, lambda: self._conn.fetch(query, *args))


async def just_run(_conn: Any, run: Any) -> Any:
    return await run()


def new_row(tenant_id: uuid.UUID, **columns: Any) -> NewJob:
    """A submission of ``montecarlo_pi`` as the service would write it; ``columns`` override."""
    job_id = uuid.uuid4()
    now = utcnow()
    row: dict[str, Any] = {
        **dict.fromkeys(WRITTEN.fields),  # what a request may leave out (notify ...): empty
        "id": job_id,
        "tenant_id": tenant_id,
        "kernel": "montecarlo_pi",
        "device": "any",
        "params": {"samples": 1},
        "inputs": {},
        "outputs": {},
        "output_tier": "local",
        "labels": {},
        "priority": 5,
        "timeout_s": 60,
        "max_retries": 0,
        "checkpoint_interval_s": 30,
        "state": "PENDING",
        "attempts": 0,
        "checkpoints": 0,
        "preemptions": 0,
        "queued_at": None,
        "state_reason": None,
        "idempotency_key": None,
        "request_hash": None,
        "created_at": now,
        "updated_at": now,
        **columns,
    }
    return NewJob(row)


@asynccontextmanager
async def writer_with(
    gw: Gateway, around: Any, *, linger_s: float = 0.05
) -> AsyncIterator[JobWriter]:
    @asynccontextmanager
    async def connect() -> AsyncIterator[Any]:
        async with raw_db(gw.res) as conn:
            yield _Conn(conn, around)

    writer = JobWriter(connect, max_rows=64, linger_s=linger_s)
    try:
        yield writer
    finally:
        await writer.stop()


async def test_a_connection_lost_mid_statement_fails_the_batch_and_leaves_nothing(
    settings: CommonSettings,
) -> None:
    async with own_gateway(settings, "gc_lost") as gw:
        t = await make_tenant(gw.client)
        tenant_id = uuid.UUID(t.tenant_id)
        # Another transaction holds key "zz" uncommitted: the batch inserts its other rows
        # first (keyed rows go last, in key order), then waits for that one.
        blocker = await asyncpg.connect(gw.dsn)
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute(
            "INSERT INTO jobs (id, tenant_id, kernel, device, params, inputs, outputs, labels, "
            "priority, timeout_s, max_retries, state, attempts, idempotency_key, created_at, "
            "updated_at) VALUES ($1, $2, 'montecarlo_pi', 'any', '{}', '{}', '{}', '{}', 5, 60, "
            "0, 'PENDING', 0, 'zz', now(), now())",
            uuid.uuid4(),
            tenant_id,
        )

        async def kill_while_waiting(conn: Any, run: Any) -> Any:
            statement = asyncio.ensure_future(run())
            pid = conn.get_server_pid()
            for _ in range(200):
                waiting = await gw.sql(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
                    pid,
                )
                if waiting:
                    break
                await asyncio.sleep(0.01)
            assert waiting, "the batch never waited for the held key"
            await gw.sql("SELECT pg_terminate_backend($1)", pid)
            return await statement

        rows = [new_row(tenant_id) for _ in range(4)] + [new_row(tenant_id, idempotency_key="zz")]
        try:
            async with writer_with(gw, kill_while_waiting) as writer:
                outcomes = await asyncio.gather(
                    *(writer.write(r) for r in rows), return_exceptions=True
                )
        finally:
            await blocking.rollback()
            await blocker.close()
        assert all(isinstance(o, DependencyUnavailable) for o in outcomes), outcomes
        assert writer.commits.writes == 0
        assert await job_ids(gw, t.tenant_id) == set()
        assert await submitted_events(gw, t.tenant_id) == {}
        # The pool replaced the dead connection: the API writes again.
        assert (await gw.client.post("/v1/jobs", json=MC, headers=t.headers)).status_code == 201


async def test_a_cancelled_request_does_not_disturb_its_batch(settings: CommonSettings) -> None:
    async with own_gateway(settings, "gc_cancel") as gw:
        t = await make_tenant(gw.client)
        tenant_id = uuid.UUID(t.tenant_id)
        in_statement = asyncio.Event()
        go_on = asyncio.Event()

        holding = asyncio.Event()

        async def hold(_conn: Any, run: Any) -> Any:
            if not holding.is_set():
                return await run()
            statement = asyncio.ensure_future(run())
            in_statement.set()
            await go_on.wait()
            return await statement

        async with writer_with(gw, hold, linger_s=0.05) as writer:
            # a row first, so that the batch below comes within the linger and lingers
            warm = new_row(tenant_id)
            assert await writer.write(warm)
            holding.set()
            gone_early = new_row(tenant_id)
            gone_late = new_row(tenant_id)
            stay = [new_row(tenant_id) for _ in range(4)]
            early = asyncio.create_task(writer.write(gone_early))
            late = asyncio.create_task(writer.write(gone_late))
            kept = [asyncio.create_task(writer.write(r)) for r in stay]
            await asyncio.sleep(0)
            early.cancel()  # client gone before the batch is written: left out
            await asyncio.wait_for(in_statement.wait(), 5)
            late.cancel()  # client gone while its batch is written: written unanswered
            with pytest.raises(asyncio.CancelledError):
                await late
            go_on.set()
            assert await asyncio.gather(*kept) == [True] * 4
            with pytest.raises(asyncio.CancelledError):
                await early
        assert writer.commits.writes == 2
        expected = {str(r.id) for r in [warm, *stay, gone_late]}
        assert await job_ids(gw, t.tenant_id) == expected
        assert await submitted_events(gw, t.tenant_id) == {}


async def test_a_bad_row_in_the_writer_is_its_own_error_only(settings: CommonSettings) -> None:
    async with own_gateway(settings, "gc_bad") as gw:
        t = await make_tenant(gw.client)
        tenant_id = uuid.UUID(t.tenant_id)

        rows = [new_row(tenant_id) for _ in range(3)]
        poison = new_row(tenant_id, device="gpu")  # breaks the jobs.device check constraint
        async with writer_with(gw, just_run) as writer:
            outcomes = await asyncio.gather(
                *(writer.write(r) for r in [rows[0], poison, *rows[1:]]), return_exceptions=True
            )
        assert outcomes[0] is True
        assert outcomes[2:] == [True, True]
        assert isinstance(outcomes[1], asyncpg.CheckViolationError)
        assert await job_ids(gw, t.tenant_id) == {str(r.id) for r in rows}


async def test_stopping_writes_what_waits_and_refuses_the_rest(settings: CommonSettings) -> None:
    async with own_gateway(settings, "gc_stop") as gw:
        t = await make_tenant(gw.client)
        tenant_id = uuid.UUID(t.tenant_id)
        rows = [new_row(tenant_id) for _ in range(3)]
        async with writer_with(gw, just_run, linger_s=10.0) as writer:
            # the first row is written at once (nothing came before it); the next ones come
            # within the linger
            assert await writer.write(rows[0])
            waiting = [asyncio.create_task(writer.write(r)) for r in rows[1:]]
            await asyncio.sleep(0.05)
            assert not any(w.done() for w in waiting)  # lingering, nothing written yet
            await asyncio.wait_for(writer.stop(), 5)  # the lifespan's end: no linger any more
            assert [w.result() for w in waiting] == [True] * 2
            with pytest.raises(DependencyUnavailable):
                await writer.write(new_row(tenant_id))
        assert await job_ids(gw, t.tenant_id) == {str(r.id) for r in rows}
