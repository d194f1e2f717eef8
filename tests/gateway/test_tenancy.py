"""Tenancy through the gateway: quotas, rate limit, usage, audit (the access matrix is in
``test_access_matrix.py``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from services.gateway.settings import GatewaySettings
from tests.gateway.conftest import ADMIN, TenantKey, gateway_client, make_tenant
from tests.gateway.test_jobs_api import MC, assert_problem, eventually_status


async def _tenant_with_quotas(client: httpx.AsyncClient, quotas: dict[str, float]) -> TenantKey:
    t = await make_tenant(client)
    r = await client.patch(f"/v1/tenants/{t.tenant_id}", json={"quotas": quotas}, headers=ADMIN)
    assert r.status_code == 200, r.text
    await asyncio.sleep(0.3)  # the tenant.changed event reaches the gateway's cache
    return t


async def test_max_queued_jobs_answers_429_and_changes_live(client: httpx.AsyncClient) -> None:
    t = await _tenant_with_quotas(client, {"max_queued_jobs": 3})
    for _ in range(3):
        assert (await client.post("/v1/jobs", json=MC, headers=t.headers)).status_code == 201
    r = await client.post("/v1/jobs", json=MC, headers=t.headers)
    body = assert_problem(r, 429)
    assert "max_queued_jobs" in str(body["detail"])
    assert int(r.headers["retry-after"]) >= 1
    r = await client.patch(
        f"/v1/tenants/{t.tenant_id}", json={"quotas": {"max_queued_jobs": 5}}, headers=ADMIN
    )
    assert r.status_code == 200
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GatewaySettings().auth_cache_ttl_s / 3  # by event, not by TTL
    while (r := await client.post("/v1/jobs", json=MC, headers=t.headers)).status_code != 201:
        assert loop.time() < deadline, r.text
        await asyncio.sleep(0.05)


async def test_rate_limit_answers_429_with_retry_after(client: httpx.AsyncClient) -> None:
    """A fresh tenant gets one second's worth of requests at once, then the rate: the count
    accepted before the first 429 is bounded by the time it took, however slow the machine."""
    rate = 5
    t = await _tenant_with_quotas(client, {"requests_per_second": rate})
    loop = asyncio.get_running_loop()
    start = loop.time()
    accepted = 0
    while (r := await client.get("/v1/jobs", headers=t.headers)).status_code == 200:
        accepted += 1
        if accepted > 1000:
            break
    elapsed = loop.time() - start
    assert accepted >= rate  # the burst allowance
    assert accepted <= rate + rate * elapsed + 1, (accepted, elapsed)  # then the rate, no more
    assert_problem(r, 429)
    assert int(r.headers["retry-after"]) >= 1
    other = await make_tenant(client)  # budgets are per tenant
    assert (await client.get("/v1/jobs", headers=other.headers)).status_code == 200


async def test_audit_records_who_what_when_and_no_secret(client: httpx.AsyncClient) -> None:
    t = await make_tenant(client)
    await client.patch(
        f"/v1/tenants/{t.tenant_id}", json={"quotas": {"max_running_jobs": 3}}, headers=ADMIN
    )
    await client.delete(f"/v1/tenants/{t.tenant_id}/keys/{t.key_id}", headers=ADMIN)
    await client.get(f"/v1/tenants/{t.tenant_id}", headers=ADMIN)
    r = await client.get("/v1/audit", params={"tenant_id": t.tenant_id}, headers=ADMIN)
    assert r.status_code == 200
    entries = r.json()["items"]
    actions = [e["action"] for e in entries]
    assert actions == [
        "tenant.read",
        "key.revoked",
        "tenant.updated",
        "key.created",
        "tenant.created",
    ]
    assert all(e["actor"] == "admin" and e["at"] for e in entries)
    changed = entries[2]["details"]
    assert changed["quotas_after"]["max_running_jobs"] == 3
    assert t.key not in r.text
    assert_problem(await client.get("/v1/audit", headers={"Authorization": "Bearer x"}), 401)


async def test_revocation_and_suspension_reach_every_gateway_before_the_cache_expires(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Two gateways, each with the key in its cache: a change made through one empties the
    other's cache by event, well before the cache's TTL would have, and no secret shows in
    either's metrics."""
    by_event_within_s = GatewaySettings().auth_cache_ttl_s / 3
    t = await make_tenant(client)
    suspended = await make_tenant(client)
    async with gateway_client(tmp_path) as second:
        for gateway in (client, second):  # both caches hold both keys
            for key in (t, suspended):
                assert (await gateway.get("/v1/jobs", headers=key.headers)).status_code == 200
        r = await client.delete(f"/v1/tenants/{t.tenant_id}/keys/{t.key_id}", headers=ADMIN)
        assert r.status_code == 204
        r = await client.patch(
            f"/v1/tenants/{suspended.tenant_id}", json={"suspended": True}, headers=ADMIN
        )
        assert r.status_code == 200
        assert await eventually_status(
            second, "/v1/jobs", t.headers, 401, within_s=by_event_within_s
        )
        assert await eventually_status(
            second, "/v1/jobs", suspended.headers, 403, within_s=by_event_within_s
        )
        for gateway in (client, second):
            metrics = (await gateway.get("/metrics")).text
            assert t.key not in metrics
            assert suspended.key not in metrics
