"""``/v1/jobs`` and ``/v1/kernels`` as the contract says, against the real database."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Job, JobEvent
from shared.messaging import Broker, Delivery, QueueSpec
from shared.settings import CommonSettings
from tests.gateway.conftest import ADMIN, TenantKey, make_tenant

MC = {"kernel": "montecarlo_pi", "params": {"samples": 1000, "seed": 1}}


async def eventually_status(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], status: int, within_s: float
) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        r = await client.get(path, headers=headers)
        if r.status_code == status:
            assert_problem(r, status)
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)


def assert_problem(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = r.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    assert "Traceback" not in r.text
    return body


async def test_kernels_are_listed_with_schemas(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    r = await client.get("/v1/kernels", headers=tenant.headers)
    assert r.status_code == 200
    by_name = {k["name"]: k for k in r.json()}
    assert "montecarlo_pi" in by_name
    assert by_name["montecarlo_pi"]["params_schema"]["properties"]["samples"]["minimum"] == 1
    assert by_name["matmul"]["inputs"] == ["a", "b"]


async def test_submit_stores_the_job_queued_and_no_event(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    r = await client.post(
        "/v1/jobs", json={**MC, "priority": 7, "labels": {"x": "y"}}, headers=tenant.headers
    )
    assert r.status_code == 201, r.text
    job = r.json()
    # no inputs to stage in: stored QUEUED, as admission would make it
    assert (job["state"], job["queued_at"]) == ("QUEUED", job["created_at"])
    assert job["priority"] == 7
    assert job["labels"] == {"x": "y"}
    assert job["params"] == {"samples": 1000, "seed": 1}
    assert job["attempts"] == 0
    assert job["result"] is None
    assert job["output_tier"] == "local"  # the default
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    for field in (
        "id",
        "state",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
        "result",
        "error",
        "worker",
        "kernel",
        "device",
        "inputs",
        "outputs",
        "timeout_s",
        "max_retries",
    ):
        assert field in job
    async with sessions() as s:
        row = await s.get(Job, uuid.UUID(job["id"]))
        assert row is not None
        assert str(row.tenant_id) == tenant.tenant_id
        assert row.output_tier == "local"
        # the scheduler's wake-up is a NOTIFY in the insert's commit, not an outbox row
        left = await s.scalar(
            text(
                "SELECT count(*) FROM outbox"
                " WHERE convert_from(body, 'UTF8')::jsonb ->> 'job_id' = :job"
            ),
            {"job": job["id"]},
        )
        assert left == 0


async def test_a_job_names_the_tier_of_its_outputs(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    for tier in ("local", "archive"):  # the configured tiers: s3 has no credentials here
        r = await client.post("/v1/jobs", json={**MC, "output_tier": tier}, headers=tenant.headers)
        assert r.status_code == 201, r.text
        assert r.json()["output_tier"] == tier
        got = await client.get(f"/v1/jobs/{r.json()['id']}", headers=tenant.headers)
        assert got.json()["output_tier"] == tier
        async with sessions() as s:
            row = await s.get(Job, uuid.UUID(r.json()["id"]))
            assert row is not None
            assert row.output_tier == tier


async def test_same_idempotency_key_gives_one_job(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    h = {**tenant.headers, "Idempotency-Key": "once"}
    rs = await asyncio.gather(*(client.post("/v1/jobs", json=MC, headers=h) for _ in range(5)))
    assert {r.status_code for r in rs} == {201}
    assert len({r.json()["id"] for r in rs}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in rs) == 4
    async with sessions() as s:
        n = await s.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == uuid.UUID(tenant.tenant_id))
        )
    assert n == 1
    # Another tenant may use the same key for its own job.
    other = await make_tenant(client)
    r2 = await client.post(
        "/v1/jobs", json=MC, headers={**other.headers, "Idempotency-Key": "once"}
    )
    assert r2.status_code == 201
    assert r2.json()["id"] != rs[0].json()["id"]


async def test_get_and_list_are_tenant_scoped(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    other = await make_tenant(client)
    mine = (await client.post("/v1/jobs", json=MC, headers=tenant.headers)).json()
    theirs = (await client.post("/v1/jobs", json=MC, headers=other.headers)).json()
    assert (await client.get(f"/v1/jobs/{mine['id']}", headers=tenant.headers)).status_code == 200
    assert_problem(await client.get(f"/v1/jobs/{theirs['id']}", headers=tenant.headers), 404)
    assert_problem(
        await client.post(f"/v1/jobs/{theirs['id']}/cancel", headers=tenant.headers), 404
    )
    assert_problem(await client.get(f"/v1/jobs/{uuid.uuid4()}", headers=tenant.headers), 404)
    listed = (await client.get("/v1/jobs", headers=tenant.headers)).json()
    ids = {j["id"] for j in listed["items"]}
    assert mine["id"] in ids
    assert theirs["id"] not in ids


async def test_list_pages_newest_first_with_cursor(client: httpx.AsyncClient) -> None:
    t = await make_tenant(client)
    made = [
        (await client.post("/v1/jobs", json=MC, headers=t.headers)).json()["id"] for _ in range(7)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/jobs", params=params, headers=t.headers)).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    r = await client.get("/v1/jobs", params={"state": "QUEUED"}, headers=t.headers)
    assert len(r.json()["items"]) == 7
    r = await client.get("/v1/jobs", params={"state": "PENDING"}, headers=t.headers)
    assert r.json()["items"] == []
    r = await client.get("/v1/jobs", params={"state": "RUNNING"}, headers=t.headers)
    assert r.json()["items"] == []
    assert_problem(await client.get("/v1/jobs", params={"limit": 501}, headers=t.headers), 422)
    assert_problem(await client.get("/v1/jobs", params={"state": "NOPE"}, headers=t.headers), 422)
    assert_problem(await client.get("/v1/jobs", params={"cursor": "zz"}, headers=t.headers), 422)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"kernel": "nope"}, ["body", "kernel"]),
        ({"kernel": "montecarlo_pi", "params": {"samples": 0}}, ["body", "params", "samples"]),
        ({"kernel": "montecarlo_pi", "params": {}}, ["body", "params", "samples"]),
        (
            {"kernel": "montecarlo_pi", "params": {"samples": 1}, "priority": 10},
            ["body", "priority"],
        ),
        (
            {"kernel": "montecarlo_pi", "params": {"samples": 1}, "device": "tpu"},
            ["body", "device"],
        ),
        ({"kernel": "montecarlo_pi", "params": {"samples": 1}, "colour": 1}, ["body", "colour"]),
        (
            {"kernel": "montecarlo_pi", "params": {"samples": 1}, "output_tier": "tape"},
            ["body", "output_tier"],
        ),
        (
            {"kernel": "montecarlo_pi", "params": {"samples": 1}, "output_tier": ""},
            ["body", "output_tier"],
        ),
        (
            {
                "kernel": "saxpy",
                "params": {"a": 2},
                "inputs": {"x": "a.npy", "y": "b.npy"},
                "outputs": {"y": "c.npy"},
            },
            ["body", "inputs", "x"],
        ),
        (
            {
                "kernel": "saxpy",
                "params": {"a": 2},
                "inputs": {"x": "a.npy"},
                "outputs": {"y": "c.npy"},
            },
            ["body", "inputs", "y"],
        ),
    ],
)
async def test_bad_submissions_are_422_and_store_nothing(
    client: httpx.AsyncClient,
    body: dict[str, object],
    loc: list[str],
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    t = await make_tenant(client)
    problem = assert_problem(await client.post("/v1/jobs", json=body, headers=t.headers), 422)
    errors = problem["errors"]
    assert isinstance(errors, list)
    assert any(e["loc"] == loc for e in errors), errors
    async with sessions() as s:
        n = await s.scalar(
            select(func.count()).select_from(Job).where(Job.tenant_id == uuid.UUID(t.tenant_id))
        )
    assert n == 0


async def test_malformed_json_is_a_problem(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    r = await client.post(
        "/v1/jobs", content=b"{nope", headers={**tenant.headers, "content-type": "application/json"}
    )
    assert_problem(r, 422)


async def test_auth_errors(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    assert_problem(await client.get("/v1/jobs"), 401)
    assert_problem(await client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}), 401)
    assert_problem(await client.get("/v1/jobs", headers={"Authorization": "Basic abc"}), 401)
    fake = "sk_live_" + "x" * 43
    assert_problem(await client.get("/v1/jobs", headers={"Authorization": f"Bearer {fake}"}), 401)
    assert_problem(await client.get("/v1/jobs", headers=ADMIN), 403)  # admin is no tenant
    assert_problem(
        await client.post("/v1/tenants", json={"name": "x"}, headers=tenant.headers), 403
    )


async def test_scopes_are_enforced(client: httpx.AsyncClient) -> None:
    ro = await make_tenant(client, scopes=["jobs:read"])
    assert (await client.get("/v1/jobs", headers=ro.headers)).status_code == 200
    assert_problem(await client.post("/v1/jobs", json=MC, headers=ro.headers), 403)
    wo = await make_tenant(client, scopes=["jobs:write"])
    assert (await client.post("/v1/jobs", json=MC, headers=wo.headers)).status_code == 201
    assert_problem(await client.get("/v1/jobs", headers=wo.headers), 403)


async def test_revoked_key_stops_working(client: httpx.AsyncClient) -> None:
    t = await make_tenant(client)
    assert (await client.get("/v1/jobs", headers=t.headers)).status_code == 200
    r = await client.delete(f"/v1/tenants/{t.tenant_id}/keys/{t.key_id}", headers=ADMIN)
    assert r.status_code == 204
    # The cached key is dropped by a tenant.changed event, not by a TTL: within 1 s.
    assert await eventually_status(client, "/v1/jobs", t.headers, 401, within_s=1.0)


async def test_suspended_tenant_gets_403(client: httpx.AsyncClient) -> None:
    t = await make_tenant(client)
    r = await client.patch(f"/v1/tenants/{t.tenant_id}", json={"suspended": True}, headers=ADMIN)
    assert r.status_code == 200
    assert r.json()["suspended"] is True
    assert await eventually_status(client, "/v1/jobs", t.headers, 403, within_s=1.0)


async def test_cancel_waiting_job_then_409(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    job = (await client.post("/v1/jobs", json=MC, headers=tenant.headers)).json()
    r = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers)
    assert r.status_code == 202
    assert r.json()["state"] == "CANCELLED"
    assert r.json()["finished_at"] is not None
    assert_problem(await client.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers), 409)
    async with sessions() as s:
        history = (
            await s.execute(
                select(JobEvent.from_state, JobEvent.to_state).where(
                    JobEvent.job_id == uuid.UUID(job["id"])
                )
            )
        ).all()
    assert [tuple(h) for h in history] == [("QUEUED", "CANCELLED")]


async def test_outbox_is_drained_by_the_relay(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessions: async_sessionmaker[AsyncSession],
    settings: CommonSettings,
) -> None:
    """A cancel's event reaches the exchange and its outbox row is gone: published, not
    lost."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    listener = Broker(settings.rabbit.model_copy(update={"queue_prefix": prefix}), name="listen")
    published: set[str] = set()

    async def handler(delivery: Delivery) -> None:
        published.add(json.loads(delivery.body)["job_id"])

    await listener.connect(attempts=3)
    try:
        await listener.consume(QueueSpec("cancelled", ("job.cancelled",), durable=False), handler)
        r = await client.post("/v1/jobs", json=MC, headers=tenant.headers)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        cancel = await client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)
        assert cancel.status_code == 202, cancel.text
        async with asyncio.timeout(30):
            while job_id not in published:
                await asyncio.sleep(0.05)
    finally:
        await listener.close()
    async with sessions() as s:
        left = await s.scalar(
            text(
                "SELECT count(*) FROM outbox"
                " WHERE convert_from(body, 'UTF8')::jsonb ->> 'job_id' = :job"
            ),
            {"job": job_id},
        )
    assert left == 0


async def test_openapi_describes_the_contract(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path, methods in {
        "/v1/tenants": {"post", "get"},
        "/v1/tenants/{tenant_id}": {"get", "patch"},
        "/v1/tenants/{tenant_id}/keys": {"post"},
        "/v1/tenants/{tenant_id}/keys/{key_id}": {"delete"},
        "/v1/kernels": {"get"},
        "/v1/jobs": {"get", "post"},
        "/v1/jobs/{job_id}": {"get"},
        "/v1/jobs/{job_id}/cancel": {"post"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
    }.items():
        assert methods <= set(paths[path]), path


async def test_health_ready_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert set(ready.json()["checks"]) == {"postgres", "rabbitmq", "redis"}
    metrics = (await client.get("/metrics")).text
    assert "stratus_http_requests_total" in metrics
    assert 'route="/healthz",status="200"' in metrics  # labelled by route template


async def test_oversize_body_is_413(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    big = {**MC, "labels": {"pad": "x" * 2_000_000}}
    assert_problem(await client.post("/v1/jobs", json=big, headers=tenant.headers), 413)
