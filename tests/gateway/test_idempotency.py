"""``Idempotency-Key``: the same key and body replay the first answer; the same key with another
body is a 422 ``.../idempotency-key-reused`` that leaves the first job or migration untouched;
an empty key is no key (422)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.gateway.jobs.schemas import JobSubmit
from shared.db.models import Job, Migration
from shared.idempotency import request_hash
from tests.gateway.conftest import TenantKey, make_tenant
from tests.gateway.test_jobs_api import assert_problem

MC = {"kernel": "montecarlo_pi", "params": {"samples": 1000, "seed": 1}}
REUSED = "/idempotency-key-reused"


def keyed(t: TenantKey, key: str) -> dict[str, str]:
    return {**t.headers, "Idempotency-Key": key}


async def count(
    sessions: async_sessionmaker[AsyncSession], model: type[Job] | type[Migration], t: TenantKey
) -> int:
    async with sessions() as s:
        n = await s.scalar(
            select(func.count()).select_from(model).where(model.tenant_id == uuid.UUID(t.tenant_id))
        )
    return int(n or 0)


def assert_reused(r: httpx.Response) -> None:
    body = assert_problem(r, 422)
    assert str(body["type"]).endswith(REUSED), body
    assert body["errors"] == [
        {"loc": ["header", "idempotency-key"], "msg": "already used for another body"}
    ]


async def test_a_job_key_reused_with_another_body_is_refused(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await make_tenant(client)
    first = await client.post("/v1/jobs", json=MC, headers=keyed(t, "sweep-1"))
    assert first.status_code == 201, first.text
    for other in (
        {**MC, "params": {"samples": 1000, "seed": 2}},
        {**MC, "priority": 9},
        {**MC, "labels": {"run": "2"}},
    ):
        assert_reused(await client.post("/v1/jobs", json=other, headers=keyed(t, "sweep-1")))
    got = await client.get(f"/v1/jobs/{first.json()['id']}", headers=t.headers)
    assert got.json()["params"] == MC["params"]
    assert got.json()["priority"] == 5
    assert got.json()["labels"] == {}
    assert await count(sessions, Job, t) == 1


async def test_the_same_body_replays_whatever_its_spelling(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await make_tenant(client)
    first = await client.post("/v1/jobs", json=MC, headers=keyed(t, "k"))
    assert first.status_code == 201, first.text
    # The keys in another order, and a default spelled out: the same request.
    same: dict[str, Any] = {"params": {"seed": 1, "samples": 1000}, "priority": 5, **MC}
    again = await client.post("/v1/jobs", json=same, headers=keyed(t, "k"))
    assert again.status_code == 201, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    assert await count(sessions, Job, t) == 1


async def test_the_answer_its_replay_and_a_read_are_the_same_job(
    client: httpx.AsyncClient,
) -> None:
    """Three mappings of the job row (the 201 built from the row written, the replay read by
    key, the ORM row of GET) give every field of the contract the same value."""
    t = await make_tenant(client)
    body = {
        **MC,
        "priority": 8,
        "labels": {"run": "7"},
        "output_tier": "archive",
        "timeout_s": 120,
        "max_retries": 1,
    }
    created = await client.post("/v1/jobs", json=body, headers=keyed(t, "three"))
    assert created.status_code == 201, created.text
    replayed = await client.post("/v1/jobs", json=body, headers=keyed(t, "three"))
    assert replayed.status_code == 201, replayed.text
    assert replayed.headers.get("idempotent-replayed") == "true"
    got = await client.get(f"/v1/jobs/{created.json()['id']}", headers=t.headers)
    assert got.status_code == 200, got.text
    assert created.json() == replayed.json() == got.json()
    assert {k: created.json()[k] for k in body} == body


async def test_the_fingerprint_is_stored_with_the_job(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await make_tenant(client)
    keyed_id = (await client.post("/v1/jobs", json=MC, headers=keyed(t, "fp"))).json()["id"]
    plain_id = (await client.post("/v1/jobs", json=MC, headers=t.headers)).json()["id"]
    query = select(Job.id, Job.request_hash).where(Job.tenant_id == uuid.UUID(t.tenant_id))
    async with sessions() as s:
        stored = {row.id: row.request_hash for row in await s.execute(query)}
    assert stored[uuid.UUID(keyed_id)] == request_hash(JobSubmit.model_validate(MC))
    assert stored[uuid.UUID(plain_id)] is None


async def test_concurrent_requests_with_one_key_and_different_bodies(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await make_tenant(client)
    bodies = [{**MC, "params": {"samples": 1000, "seed": i}} for i in range(8)]
    rs = await asyncio.gather(
        *(client.post("/v1/jobs", json=b, headers=keyed(t, "race")) for b in bodies)
    )
    created = [r for r in rs if r.status_code == 201]
    assert len(created) == 1, [r.text for r in rs]
    for r in rs:
        if r.status_code != 201:
            assert_reused(r)
    assert await count(sessions, Job, t) == 1


async def test_an_empty_key_is_refused(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await make_tenant(client)
    for path, body in (
        ("/v1/jobs", MC),
        ("/v1/migrations", {"dataset": "x.bin", "to_tier": "archive", "mode": "copy"}),
    ):
        r = await client.post(path, json=body, headers=keyed(t, ""))
        problem = assert_problem(r, 422)
        assert problem["errors"][0]["loc"] == ["header", "idempotency-key"]  # type: ignore[index]
    assert await count(sessions, Job, t) == 0


async def test_a_migration_key_reused_with_another_body_is_refused(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await make_tenant(client)
    for name in ("a.bin", "b.bin"):
        put = await client.put(f"/v1/datasets/{name}", content=b"abc", headers=t.headers)
        assert put.status_code == 201, put.text
    body = {"dataset": "a.bin", "to_tier": "archive", "mode": "copy"}
    first = await client.post("/v1/migrations", json=body, headers=keyed(t, "m"))
    assert first.status_code == 202, first.text
    for other in ({**body, "mode": "move"}, {**body, "dataset": "b.bin"}):
        assert_reused(await client.post("/v1/migrations", json=other, headers=keyed(t, "m")))
    again = await client.post("/v1/migrations", json=body, headers=keyed(t, "m"))
    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    got = (await client.get(f"/v1/migrations/{first.json()['id']}", headers=t.headers)).json()
    assert (got["dataset"], got["mode"]) == ("a.bin", "copy")
    assert await count(sessions, Migration, t) == 1
