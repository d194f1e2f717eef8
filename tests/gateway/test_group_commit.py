"""Group commit of submissions (services/gateway/jobs/writer.py) through the API against the
real database: concurrent requests share a transaction, every answer matches its durable row
and outbox event, one idempotency key gives one job even within a batch, a bad row fails only
its own request, and a database that goes away fails the whole batch with a 503 and leaves
nothing of it behind. The writer driven directly: tests/gateway/test_job_writer.py.

Each test runs a gateway on a database of its own with the outbox relay disabled, so the
outbox rows the submissions wrote can be counted before anything publishes them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
from fastapi import FastAPI

from services.gateway.app import create_app
from services.gateway.deps import GatewayDb
from services.gateway.jobs.writer import JobWriter
from services.gateway.settings import GatewaySettings
from shared.runtime import Resources
from shared.settings import CommonSettings, StorageSettings
from tests.factories import own_database
from tests.gateway.conftest import TenantKey, make_tenant
from tests.gateway.test_jobs_api import MC, assert_problem
from tests.gateway.test_submit_validation import npy
from tests.netfault import TcpProxy
from tests.wakeups import Wakeups


@dataclass
class Gateway:
    app: FastAPI
    client: httpx.AsyncClient
    dsn: str

    @property
    def res(self) -> Resources:
        res: Resources = self.app.state.resources
        return res

    @property
    def writer(self) -> JobWriter:
        db: GatewayDb = self.app.state.submit_db
        return db.writer

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()


@asynccontextmanager
async def own_gateway(
    settings: CommonSettings, suffix: str, *, port: int | None = None, **updates: Any
) -> AsyncIterator[Gateway]:
    """A gateway on a database of its own (reached through ``port`` when given), relay off."""
    async with own_database(settings, suffix) as (name, _sessions):
        gw = GatewaySettings()
        pg = gw.postgres.model_copy(update={"database": name})
        dsn = pg.url(driver="postgresql")
        if port is not None:
            pg = pg.model_copy(update={"port": port})
        gw = gw.model_copy(
            update={
                "postgres": pg,
                "outbox": gw.outbox.model_copy(update={"enabled": False}),
                **updates,
            }
        )
        app = create_app(gw)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                yield Gateway(app, client, dsn)


async def submitted_events(gw: Gateway, tenant_id: str) -> dict[str, int]:
    """job id -> number of job.submitted outbox rows for it, for ``tenant_id``: none, since a
    submission wakes the scheduler by NOTIFY (``tests.wakeups`` sees those)."""
    rows = await gw.sql(
        "SELECT convert_from(body, 'UTF8')::jsonb ->> 'job_id' AS job_id, count(*) AS n "
        "FROM outbox WHERE routing_key = 'job.submitted' "
        "AND convert_from(body, 'UTF8')::jsonb ->> 'tenant_id' = $1 GROUP BY 1",
        tenant_id,
    )
    return {r["job_id"]: r["n"] for r in rows}


def one_batch_of(gw: Gateway, rows: int) -> None:
    """The writer's next batch is written when ``rows`` wait, however slow the machine is."""
    gw.writer.commits.max_batch, gw.writer.commits.linger_s = rows, 10.0


async def job_ids(gw: Gateway, tenant_id: str) -> set[str]:
    rows = await gw.sql("SELECT id::text FROM jobs WHERE tenant_id = $1::uuid", tenant_id)
    return {r[0] for r in rows}


async def test_concurrent_submits_share_transactions_and_each_answer_is_its_row(
    settings: CommonSettings,
) -> None:
    async with own_gateway(
        settings, "gc_many", submit_batch_max_rows=32, submit_batch_linger_s=0.1
    ) as gw:
        t = await make_tenant(gw.client)
        # The key and the quota counts cached first: 120 requests that all miss the caches
        # at once would each want a database connection (a 503 past the pool's wait).
        first = await gw.client.post("/v1/jobs", json=MC, headers=t.headers)
        assert first.status_code == 201, first.text
        bodies = [{**MC, "priority": i % 10, "labels": {"n": str(i)}} for i in range(120)]
        before = gw.writer.commits.writes
        async with Wakeups(gw.dsn) as seen:
            rs = await asyncio.gather(
                *(gw.client.post("/v1/jobs", json=b, headers=t.headers) for b in bodies)
            )
            # one wake-up of the scheduler per commit, however many rows it wrote
            commits = gw.writer.commits.writes - before
            assert await seen.take() == ["job.submitted"] * commits
        assert [r.status_code for r in rs] == [201] * len(bodies), {r.text for r in rs}
        assert commits < len(bodies) / 8  # really batched
        ids = [r.json()["id"] for r in rs]
        assert len(set(ids)) == len(bodies)
        for r, body in zip(rs, bodies, strict=True):
            job = r.json()
            assert r.headers["location"] == f"/v1/jobs/{job['id']}"
            assert "idempotent-replayed" not in r.headers
            assert job["labels"] == body["labels"]
            assert job["priority"] == body["priority"]
        # Each answer is what reading the job back gives (jsonb orders object keys its own
        # way, so the documents are compared, not their bytes).
        for r in rs[:10] + rs[-10:]:
            got = await gw.client.get(f"/v1/jobs/{r.json()['id']}", headers=t.headers)
            assert got.status_code == 200
            assert got.json() == r.json()
        assert await job_ids(gw, t.tenant_id) == {*ids, first.json()["id"]}
        assert await submitted_events(gw, t.tenant_id) == {}
        rows = await gw.sql(
            "SELECT id::text, labels ->> 'n', priority, state, attempts FROM jobs "
            "WHERE tenant_id = $1::uuid",
            t.tenant_id,
        )
        by_id = {r[0]: tuple(r)[1:] for r in rows}
        for i, job_id in enumerate(ids):
            assert by_id[job_id] == (str(i), i % 10, "QUEUED", 0)


async def test_same_key_in_one_batch_gives_one_job(settings: CommonSettings) -> None:
    async with own_gateway(settings, "gc_key") as gw:
        t = await make_tenant(gw.client)
        await gw.client.post("/v1/jobs", json=MC, headers=t.headers)  # quota count cached
        one_batch_of(gw, 12)
        before = gw.writer.commits.writes
        keyed = {**t.headers, "Idempotency-Key": "same-batch"}
        rs = await asyncio.gather(
            *(gw.client.post("/v1/jobs", json=MC, headers=keyed) for _ in range(8)),
            *(gw.client.post("/v1/jobs", json=MC, headers=t.headers) for _ in range(4)),
        )
        assert gw.writer.commits.writes - before == 1  # all twelve rows went in one transaction
        assert {r.status_code for r in rs} == {201}
        keyed_rs = rs[:8]
        assert len({r.json()["id"] for r in keyed_rs}) == 1
        assert [r.headers.get("idempotent-replayed") for r in keyed_rs].count("true") == 7
        assert all(r.headers["location"] == keyed_rs[0].headers["location"] for r in keyed_rs)
        assert len({r.json()["id"] for r in rs[8:]}) == 4
        rows = await gw.sql(
            "SELECT id::text FROM jobs WHERE tenant_id = $1::uuid AND idempotency_key = $2",
            t.tenant_id,
            "same-batch",
        )
        assert [r[0] for r in rows] == [keyed_rs[0].json()["id"]]
        assert await submitted_events(gw, t.tenant_id) == {}
        # A later replay answers the same job, and reads as the first answer did.
        again = await gw.client.post("/v1/jobs", json=MC, headers=keyed)
        assert again.headers.get("idempotent-replayed") == "true"
        assert again.json() == keyed_rs[0].json()


async def test_expired_key_is_released_for_a_new_job(settings: CommonSettings) -> None:
    async with own_gateway(settings, "gc_expire", idempotency_window_s=60) as gw:
        t = await make_tenant(gw.client)
        h = {**t.headers, "Idempotency-Key": "old"}
        first = await gw.client.post("/v1/jobs", json=MC, headers=h)
        assert first.status_code == 201
        await gw.sql(
            "UPDATE jobs SET created_at = now() - interval '2 minutes' WHERE id = $1::uuid",
            first.json()["id"],
        )
        second = await gw.client.post("/v1/jobs", json=MC, headers=h)
        assert second.status_code == 201
        assert "idempotent-replayed" not in second.headers
        assert second.json()["id"] != first.json()["id"]
        rows = await gw.sql(
            "SELECT id::text, idempotency_key FROM jobs WHERE tenant_id = $1::uuid ORDER BY "
            "created_at",
            t.tenant_id,
        )
        assert [tuple(r) for r in rows] == [
            (first.json()["id"], None),
            (second.json()["id"], "old"),
        ]


async def test_a_bad_row_fails_only_its_own_request(settings: CommonSettings) -> None:
    async with own_gateway(settings, "gc_poison") as gw:
        good = await make_tenant(gw.client)
        doomed: TenantKey = await make_tenant(gw.client)
        for t in (good, doomed):  # keys authenticated and quota counts cached in the gateway
            r = await gw.client.post("/v1/jobs", json=MC, headers=t.headers)
            assert r.status_code == 201
        # The tenant disappears under the gateway's caches: its rows break the foreign key.
        await gw.sql("DELETE FROM tenants WHERE id = $1::uuid", doomed.tenant_id)
        one_batch_of(gw, 13)
        before = gw.writer.commits.writes
        rs = await asyncio.gather(
            *(gw.client.post("/v1/jobs", json=MC, headers=good.headers) for _ in range(6)),
            gw.client.post("/v1/jobs", json=MC, headers=doomed.headers),
            *(gw.client.post("/v1/jobs", json=MC, headers=good.headers) for _ in range(6)),
        )
        bad = rs.pop(6)
        assert_problem(bad, 500)
        assert [r.status_code for r in rs] == [201] * 12
        assert gw.writer.commits.writes - before == 12  # the batch failed, then each good row alone
        ids = {r.json()["id"] for r in rs}
        stored = await job_ids(gw, good.tenant_id)
        assert ids <= stored
        assert len(stored) == 13
        assert await submitted_events(gw, good.tenant_id) == {}
        assert await job_ids(gw, doomed.tenant_id) == set()


async def test_database_away_is_503_for_the_whole_batch_and_writes_nothing(
    settings: CommonSettings,
) -> None:
    proxy = TcpProxy(settings.postgres.port)
    await proxy.start()
    try:
        async with own_gateway(
            settings, "gc_away", port=proxy.port, submit_batch_linger_s=0.02
        ) as gw:
            t = await make_tenant(gw.client)
            assert (await gw.client.post("/v1/jobs", json=MC, headers=t.headers)).is_success
            await proxy.stop()
            rs = await asyncio.gather(
                *(gw.client.post("/v1/jobs", json=MC, headers=t.headers) for _ in range(10))
            )
            for r in rs:
                problem = assert_problem(r, 503)
                assert problem["title"] == "Service unavailable"  # as a session's outage is
                assert problem["detail"] in {
                    "The database is unavailable; retry later.",
                    "postgres is unavailable; retry later.",  # once the circuit is open
                }
                assert int(r.headers["retry-after"]) >= 1
            await proxy.start()
            assert len(await job_ids(gw, t.tenant_id)) == 1  # only the first one
            assert await submitted_events(gw, t.tenant_id) == {}
    finally:
        with contextlib.suppress(Exception):
            await proxy.stop()


# The writer on its own, with a connection whose backend dies or that is held up on purpose.


async def test_a_job_with_inputs_checks_they_exist(
    settings: CommonSettings, tmp_path: Path
) -> None:
    storage = StorageSettings.model_validate(
        {"local": {"root": str(tmp_path / "local")}, "fsync": False}
    )
    async with own_gateway(settings, "gc_inputs", storage=storage) as gw:
        t = await make_tenant(gw.client)
        array = npy(np.ones(8))  # the inputs' .npy headers are checked too
        put = await gw.client.put("/v1/datasets/in/x.bin", content=array, headers=t.headers)
        assert put.status_code == 201, put.text
        body = {
            "kernel": "saxpy",
            "params": {"a": 2},
            "inputs": {"x": "in/x.bin", "y": "in/y.bin"},
            "outputs": {"y": "out/y.bin"},
        }
        missing = assert_problem(
            await gw.client.post("/v1/jobs", json=body, headers=t.headers), 422
        )
        assert missing["errors"] == [
            {"loc": ["body", "inputs", "y"], "msg": "dataset 'in/y.bin' not found"}
        ]
        assert await job_ids(gw, t.tenant_id) == set()
        put = await gw.client.put("/v1/datasets/in/y.bin", content=array, headers=t.headers)
        assert put.status_code == 201, put.text
        r = await gw.client.post("/v1/jobs", json=body, headers=t.headers)
        assert r.status_code == 201, r.text
        assert r.json()["inputs"] == body["inputs"]
        assert await job_ids(gw, t.tenant_id) == {r.json()["id"]}
        assert await submitted_events(gw, t.tenant_id) == {}
