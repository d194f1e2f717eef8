"""``GET /v1/usage`` reads ``job_attempts``, the one source of usage: every way an attempt
ends counts once; ``since``/``until`` bound it and ``group_by`` splits it; it needs the
``jobs:read`` scope. ``GET /v1/tenant``: the caller's quotas and its use of each."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import JobAttempt
from shared.events import utcnow
from tests.factories import new_job
from tests.gateway.conftest import ADMIN, TenantKey, make_tenant
from tests.gateway.test_jobs_api import assert_problem

# (kernel, labels, outcome of attempt 1, its cpu seconds, hours ago)
ATTEMPTS = [
    ("montecarlo_pi", {"run": "a"}, "SUCCEEDED", 1.0, 1),
    ("montecarlo_pi", {"run": "a"}, "CANCELLED", 2.0, 1),  # cancelled while running
    ("saxpy", {"run": "b"}, "TIMED_OUT", 4.0, 30),  # more than a day ago
    ("saxpy", {}, "FAILED", 8.0, 1),
    ("matmul", {"run": "b"}, "LOST", 16.0, 1),  # reaped after its worker was lost
]


async def with_attempts(
    sessions: async_sessionmaker[AsyncSession], tenant_id: uuid.UUID
) -> list[uuid.UUID]:
    ids = []
    async with sessions() as session, session.begin():
        for kernel, labels, outcome, cpu, hours in ATTEMPTS:
            job = new_job(tenant_id, kernel=kernel, labels=labels, state="FAILED", attempts=1)
            session.add(job)
            await session.flush()
            session.add(
                JobAttempt(
                    job_id=job.id,
                    attempt=1,
                    tenant_id=tenant_id,
                    outcome=outcome,
                    cpu_seconds=cpu,
                    gpu_seconds=cpu / 10,
                    finished_at=utcnow() - timedelta(hours=hours),
                )
            )
            ids.append(job.id)
    return ids


@pytest.fixture
async def used(client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]) -> TenantKey:
    t = await make_tenant(client)
    await with_attempts(sessions, uuid.UUID(t.tenant_id))
    return t


async def test_every_attempt_counts_once_however_it_ended(
    client: httpx.AsyncClient, used: TenantKey
) -> None:
    usage = (await client.get("/v1/usage", headers=used.headers)).json()
    assert usage["cpu_seconds"] == pytest.approx(31.0)
    assert usage["gpu_seconds"] == pytest.approx(3.1)
    assert usage["jobs"]["FAILED"] == 5
    assert usage["groups"] is None
    admin = (await client.get("/v1/admin/usage", headers=ADMIN)).json()
    [mine] = [u for u in admin["items"] if u["tenant_id"] == used.tenant_id]
    assert mine["cpu_seconds"] == pytest.approx(31.0)


async def test_a_window_bounds_the_attempts_by_when_they_ended(
    client: httpx.AsyncClient, used: TenantKey
) -> None:
    since = (utcnow() - timedelta(hours=2)).isoformat()
    usage = (await client.get("/v1/usage", params={"since": since}, headers=used.headers)).json()
    assert usage["cpu_seconds"] == pytest.approx(27.0)  # not the 4 s of 30 h ago
    until = (utcnow() - timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    old = (await client.get("/v1/usage", params={"until": until}, headers=used.headers)).json()
    assert old["cpu_seconds"] == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        ("kernel", {"matmul": (16.0, 1), "montecarlo_pi": (3.0, 2), "saxpy": (12.0, 2)}),
        ("label", {"run:a": (3.0, 2), "run:b": (20.0, 2), None: (8.0, 1)}),
    ],
)
async def test_group_by_splits_the_window(
    client: httpx.AsyncClient, used: TenantKey, group_by: str, expected: dict[str, object]
) -> None:
    r = await client.get("/v1/usage", params={"group_by": group_by}, headers=used.headers)
    body = r.json()
    assert body["group_by"] == group_by
    got = {g["key"]: (g["cpu_seconds"], g["jobs"]) for g in body["groups"]}
    assert got == expected
    assert sum(g["cpu_seconds"] for g in body["groups"]) == pytest.approx(body["cpu_seconds"])


async def test_group_by_day(client: httpx.AsyncClient, used: TenantKey) -> None:
    body = (await client.get("/v1/usage", params={"group_by": "day"}, headers=used.headers)).json()
    days = [g["key"] for g in body["groups"]]
    assert days == sorted(days)
    assert days[-1] == (utcnow() - timedelta(hours=1)).strftime("%Y-%m-%d")
    assert sum(g["jobs"] for g in body["groups"]) == 5


@pytest.mark.parametrize(
    "params",
    [
        {"group_by": "tenant"},
        {"since": "yesterday"},
        {"since": "2026-01-01T00:00:00"},  # no offset
        {"since": "1700000000"},  # seconds since 1970: not RFC 3339
        {"until": "0.5"},
    ],
)
async def test_bad_bounds_or_grouping_are_a_422(
    client: httpx.AsyncClient, tenant: TenantKey, params: dict[str, str]
) -> None:
    assert_problem(await client.get("/v1/usage", params=params, headers=tenant.headers), 422)


async def test_usage_needs_the_jobs_read_scope(client: httpx.AsyncClient) -> None:
    data_only = await make_tenant(client, scopes=["data:read"])
    assert_problem(await client.get("/v1/usage", headers=data_only.headers), 403)
    assert_problem(await client.get("/v1/usage", headers=ADMIN), 403)
    reader = await make_tenant(client, scopes=["jobs:read"])
    assert (await client.get("/v1/usage", headers=reader.headers)).status_code == 200


async def test_the_caller_sees_its_quotas_and_its_use_of_each(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await make_tenant(client)
    quotas = {"max_queued_jobs": 7, "cpu_seconds_per_day": 1000}
    r = await client.patch(f"/v1/tenants/{t.tenant_id}", json={"quotas": quotas}, headers=ADMIN)
    assert r.status_code == 200, r.text
    tid = uuid.UUID(t.tenant_id)
    await with_attempts(sessions, tid)
    async with sessions() as session, session.begin():
        session.add(new_job(tid, state="RUNNING", attempts=1, timeout_s=120))
        session.add(new_job(tid, state="QUEUED"))
        session.add(new_job(tid))
    me = (await client.get("/v1/tenant", headers=t.headers)).json()
    assert me["id"] == t.tenant_id
    assert me["weight"] == 1
    assert me["quotas"]["max_queued_jobs"] == 7
    assert me["quotas"]["max_running_jobs"] > 0  # the default, filled in
    use = me["usage"]
    assert use["max_running_jobs"]["used"] == 1
    assert use["max_queued_jobs"] == {"limit": 7, "used": 2, "held": None}
    assert use["cpu_seconds_per_day"]["limit"] == 1000
    assert use["cpu_seconds_per_day"]["used"] == pytest.approx(27.0)  # the last 24 h
    assert use["cpu_seconds_per_day"]["held"] == pytest.approx(120.0)  # the running job
    assert use["storage_bytes"]["used"] == 0
    assert use["requests_per_second"]["limit"] > 0
    assert_problem(await client.get("/v1/tenant", headers=ADMIN), 403)
    other = await make_tenant(client)
    theirs = (await client.get("/v1/tenant", headers=other.headers)).json()
    assert theirs["id"] == other.tenant_id
    assert theirs["usage"]["max_queued_jobs"]["used"] == 0


async def test_a_window_that_ends_before_it_starts_is_empty(
    client: httpx.AsyncClient, used: TenantKey
) -> None:
    params = {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}
    r = await client.get("/v1/usage", params=params, headers=used.headers)
    assert r.status_code == 200, r.text
    assert r.json()["cpu_seconds"] == 0
