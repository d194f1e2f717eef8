"""Hostile input on every field: a 4xx with a clear message, and nothing stored."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Job, Tenant
from tests.gateway.conftest import ADMIN, TenantKey
from tests.gateway.test_jobs_api import MC, assert_problem

HOSTILE_JOBS: list[dict[str, object]] = [
    {**MC, "priority": 10**30},
    {**MC, "priority": -1},
    {**MC, "timeout_s": -5},
    {**MC, "timeout_s": 1e300},
    {**MC, "max_retries": 10**9},
    {"kernel": "montecarlo_pi", "params": {"samples": 10**40}},
    {"kernel": "montecarlo_pi", "params": {"samples": "lots"}},
    {"kernel": "montecarlo_pi", "params": {"samples": 10, "seed": -1}},
    {
        "kernel": "saxpy",
        "params": {"a": float("nan")},
        "inputs": {"x": "a", "y": "b"},
        "outputs": {"y": "c"},
    },
    {**MC, "labels": {"k": "nul\x00byte"}},
    {**MC, "labels": {"k": "bell\x07"}},
    {**MC, "labels": {"'; DROP TABLE jobs; --": "v"}},
    {**MC, "labels": {"../../etc/passwd": "v"}},
    {**MC, "labels": {"ok": "x" * 300}},
    {**MC, "labels": {f"k{i}": "v" for i in range(65)}},
    {"kernel": "montecarlo_pi\x00", "params": {"samples": 1}},
    {"kernel": "'; DROP TABLE jobs; --", "params": {}},
    {"kernel": "ü" * 101},
    {**MC, "device": "cpu; rm -rf /"},
    {**MC, "inputs": {"x": "../../secret"}},
]


@pytest.mark.parametrize("body", HOSTILE_JOBS, ids=[str(i) for i in range(len(HOSTILE_JOBS))])
async def test_hostile_job_bodies(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    body: dict[str, object],
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    content = json.dumps(body).encode()  # NaN goes out as the bare literal Python accepts
    r = await client.post(
        "/v1/jobs", content=content, headers={**tenant.headers, "content-type": "application/json"}
    )
    problem = assert_problem(r, 422)
    assert problem["detail"]
    async with sessions() as s:
        n = await s.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == uuid.UUID(tenant.tenant_id))
        )
    assert n == 0


@pytest.mark.parametrize(
    "body",
    [
        {"name": "nul\x00"},
        {"name": "x" * 201},
        {"name": "<script>"},
        {"name": "a/../b"},
        {"name": "ok", "weight": 10**20},
        {"name": "ok", "quotas": {"max_running_jobs": -1}},
        {"name": "ok", "quotas": {"requests_per_second": 0}},
        {"name": ["list"]},
    ],
)
async def test_hostile_tenant_bodies(
    client: httpx.AsyncClient,
    body: dict[str, object],
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    if body["name"] == "ok":  # a valid name, this test's own, so that the count is too
        body = {**body, "name": f"hostile-{uuid.uuid4().hex[:8]}"}
    name = body["name"]
    names = [str(n) for n in name] if isinstance(name, list) else [str(name)]
    names = [n for n in names if "\x00" not in n]  # a text column cannot hold those at all
    assert_problem(await client.post("/v1/tenants", json=body, headers=ADMIN), 422)
    async with sessions() as s:
        stored = await s.scalar(
            select(func.count()).select_from(Tenant).where(Tenant.name.in_(names))
        )
    assert stored == 0


async def test_hostile_key_names_and_paths(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    url = f"/v1/tenants/{tenant.tenant_id}/keys"
    assert_problem(await client.post(url, json={"name": "tab\there"}, headers=ADMIN), 422)
    # a job id that is no id names no job of the caller's: the 404 of any unknown id
    assert_problem(await client.get("/v1/jobs/not-a-uuid", headers=tenant.headers), 404)
    assert_problem(await client.get("/v1/jobs/1%27%20OR%201=1", headers=tenant.headers), 404)
    assert_problem(await client.get("/v1/tenants/1%27%20OR%201=1", headers=ADMIN), 422)
    assert_problem(await client.get("/v1/jobs?limit=-1", headers=tenant.headers), 422)
    assert_problem(
        await client.get("/v1/jobs?limit=99999999999999999999", headers=tenant.headers), 422
    )
