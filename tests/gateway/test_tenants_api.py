"""``/v1/tenants`` (admin): creation, conflicts, keys stored hashed, patch."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import ApiKey
from tests.gateway.conftest import ADMIN
from tests.gateway.test_jobs_api import assert_problem


async def test_create_tenant_and_conflict(client: httpx.AsyncClient) -> None:
    name = f"lab-{uuid.uuid4().hex[:8]}"
    r = await client.post(
        "/v1/tenants",
        json={"name": name, "weight": 3, "quotas": {"max_running_jobs": 5}},
        headers=ADMIN,
    )
    assert r.status_code == 201
    t = r.json()
    assert t["weight"] == 3
    assert t["quotas"]["max_running_jobs"] == 5
    assert t["quotas"]["max_queued_jobs"] > 0  # defaults fill the rest
    assert_problem(await client.post("/v1/tenants", json={"name": name}, headers=ADMIN), 409)
    got = await client.get(f"/v1/tenants/{t['id']}", headers=ADMIN)
    assert got.json()["name"] == name
    listed = (await client.get("/v1/tenants", headers=ADMIN)).json()["items"]
    assert any(x["id"] == t["id"] for x in listed)
    assert_problem(await client.get(f"/v1/tenants/{uuid.uuid4()}", headers=ADMIN), 404)


async def test_bad_tenant_bodies(client: httpx.AsyncClient) -> None:
    for body in (
        {},
        {"name": ""},
        {"name": "x", "weight": 0},
        {"name": "a b"},
        {"name": "x", "quotas": {"nope": 1}},
    ):
        assert_problem(await client.post("/v1/tenants", json=body, headers=ADMIN), 422)


async def test_key_is_shown_once_and_stored_hashed(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    tid = (
        await client.post("/v1/tenants", json={"name": f"k-{uuid.uuid4().hex[:8]}"}, headers=ADMIN)
    ).json()["id"]
    r = await client.post(
        f"/v1/tenants/{tid}/keys", json={"name": "ci", "scopes": ["jobs:read"]}, headers=ADMIN
    )
    assert r.status_code == 201
    body = r.json()
    assert set(body) >= {"id", "key", "prefix", "scopes", "created_at"}
    assert body["key"].startswith(body["prefix"])
    assert body["scopes"] == ["jobs:read"]
    async with sessions() as s:
        row = (
            await s.execute(select(ApiKey).where(ApiKey.id == uuid.UUID(body["id"])))
        ).scalar_one()
    assert body["key"].encode() not in row.key_hash
    assert len(row.key_hash) == 32
    assert_problem(
        await client.post(
            f"/v1/tenants/{tid}/keys", json={"name": "x", "scopes": ["root"]}, headers=ADMIN
        ),
        422,
    )
    assert_problem(
        await client.post(f"/v1/tenants/{uuid.uuid4()}/keys", json={"name": "x"}, headers=ADMIN),
        404,
    )
    assert_problem(
        await client.delete(f"/v1/tenants/{tid}/keys/{uuid.uuid4()}", headers=ADMIN), 404
    )


async def test_patch_tenant(client: httpx.AsyncClient) -> None:
    tid = (
        await client.post("/v1/tenants", json={"name": f"p-{uuid.uuid4().hex[:8]}"}, headers=ADMIN)
    ).json()["id"]
    r = await client.patch(
        f"/v1/tenants/{tid}", json={"weight": 5, "quotas": {"max_queued_jobs": 7}}, headers=ADMIN
    )
    assert r.status_code == 200
    assert r.json()["weight"] == 5
    assert r.json()["quotas"]["max_queued_jobs"] == 7
    assert_problem(
        await client.patch(f"/v1/tenants/{tid}", json={"weight": -1}, headers=ADMIN), 422
    )
