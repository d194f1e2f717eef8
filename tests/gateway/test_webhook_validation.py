"""``notify`` at submission and ``POST /v1/tenant/webhook-secret``: a destination the operator
has not allowed (any private, loopback, link-local ... address, by literal or by a name that
resolves to one), a URL that is not plain http(s) or carries a user, an unknown event, or a
tenant without a secret is a 422 with nothing stored; the secret is shown once, rotates, signs
the deliveries of its own tenant only, and never reaches the logs."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from services.scheduler.webhooks import Deliverer
from shared.settings import CommonSettings, WebhookSettings
from shared.webhooks import SIGNATURE_HEADER, verify
from tests.gateway.conftest import ADMIN, TenantKey, make_tenant
from tests.gateway.test_group_commit import Gateway, own_gateway
from tests.gateway.test_jobs_api import MC, assert_problem
from tests.scheduler.webhook_receiver import receiver

REFUSED = [
    "http://127.0.0.1/hook",
    "http://10.0.0.1/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[fe80::1]/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
    "http://100.64.0.1/hook",
    "http://localhost:8080/hook",  # a name that resolves to loopback
    "ftp://example.com/hook",
    "file:///etc/passwd",
    "http://user:pw@example.com/hook",
    "https://user@example.com/hook",
    "http:///hook",
]


async def secret_of(client: httpx.AsyncClient, t: TenantKey) -> str:
    r = await client.post("/v1/tenant/webhook-secret", headers=t.headers)
    assert r.status_code == 201, r.text
    secret: str = r.json()["secret"]
    return secret


async def jobs_of(client: httpx.AsyncClient, t: TenantKey) -> list[Any]:
    r = await client.get("/v1/jobs", headers=t.headers)
    assert r.status_code == 200, r.text
    items: list[Any] = r.json()["items"]
    return items


async def test_refused_destinations_are_422_and_nothing_is_stored(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await secret_of(client, tenant)
    for url in REFUSED:
        body = {**MC, "notify": {"url": url, "events": ["final"]}}
        r = await client.post("/v1/jobs", json=body, headers=tenant.headers)
        problem = assert_problem(r, 422)
        errors: list[dict[str, Any]] = problem["errors"]  # type: ignore[assignment]
        assert any(e["loc"][:2] == ["body", "notify"] for e in errors), (url, problem)
        if "localhost" in url:  # what an internal name resolves to is not told
            assert "127.0.0.1" not in r.text
    array = {**MC, "array": {"size": 3}, "notify": {"url": REFUSED[0], "events": ["state"]}}
    assert_problem(await client.post("/v1/jobs", json=array, headers=tenant.headers), 422)
    assert await jobs_of(client, tenant) == []


@pytest.mark.parametrize(
    "notify",
    [
        {"url": "https://example.com/hook", "events": ["done"]},
        {"url": "https://example.com/hook", "events": []},
        {"url": "https://example.com/hook"},
        {"url": "https://example.com/hook", "events": ["final"], "secret": "x"},
        {"url": 5, "events": ["final"]},
    ],
)
async def test_a_malformed_notify_is_422(
    client: httpx.AsyncClient, tenant: TenantKey, notify: dict[str, Any]
) -> None:
    r = await client.post("/v1/jobs", json={**MC, "notify": notify}, headers=tenant.headers)
    assert_problem(r, 422)
    assert await jobs_of(client, tenant) == []


async def test_the_secret_is_shown_once_rotates_and_needs_a_tenant_key(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    first = await secret_of(client, tenant)
    second = await secret_of(client, tenant)
    assert first != second
    assert first.startswith("whsec_")
    me = await client.get("/v1/tenant", headers=tenant.headers)
    assert second not in me.text
    assert_problem(await client.post("/v1/tenant/webhook-secret", headers=ADMIN), 403)
    reader = await make_tenant(client, scopes=["jobs:read"])
    assert_problem(await client.post("/v1/tenant/webhook-secret", headers=reader.headers), 403)
    assert_problem(await client.post("/v1/tenant/webhook-secret"), 401)


@pytest.fixture(scope="module")
async def allowing(settings: CommonSettings) -> Any:
    """A gateway whose operator allows 127.0.0.1 (where the tests' receiver listens)."""
    allow = WebhookSettings(allow="127.0.0.1/32", backoff_s=0.05, backoff_max_s=0.1)
    async with own_gateway(settings, "webhooks", webhooks=allow) as gw:
        yield gw


async def test_an_allowed_destination_is_stored_and_needs_a_secret(allowing: Gateway) -> None:
    c = allowing.client
    t = await make_tenant(c)
    notify = {"url": "http://127.0.0.1:9/hook", "events": ["final"]}
    r = await c.post("/v1/jobs", json={**MC, "notify": notify}, headers=t.headers)
    assert "webhook secret" in str(assert_problem(r, 422)["detail"])
    await secret_of(c, t)
    r = await c.post("/v1/jobs", json={**MC, "notify": notify}, headers=t.headers)
    assert r.status_code == 201, r.text
    assert r.json()["notify"] == notify
    got = await c.get(f"/v1/jobs/{r.json()['id']}", headers=t.headers)
    assert got.json()["notify"] == notify
    array = {**MC, "array": {"size": 2}, "notify": {**notify, "events": ["state"]}}
    r = await c.post("/v1/jobs", json=array, headers=t.headers)
    assert r.status_code == 201, r.text
    [row] = await allowing.sql(
        "SELECT notify::text FROM jobs WHERE id = $1", uuid.UUID(r.json()["id"])
    )
    assert orjson.loads(row["notify"]) == {**notify, "events": ["state"]}
    # a refused destination is refused on this gateway too
    refused = {**MC, "notify": {"url": "http://10.0.0.1/hook", "events": ["final"]}}
    assert_problem(await c.post("/v1/jobs", json=refused, headers=t.headers), 422)


async def test_deliveries_are_signed_with_their_own_tenants_secret_and_never_logged(
    allowing: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    c = allowing.client
    caplog.set_level(logging.DEBUG)
    with capture_logs() as events, receiver() as got:
        a, b = await make_tenant(c), await make_tenant(c)
        secret_a, secret_b = await secret_of(c, a), await secret_of(c, b)
        body = {**MC, "notify": {"url": got.url, "events": ["final"]}}
        r = await c.post("/v1/jobs", json=body, headers=a.headers)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        assert_problem(await c.get(f"/v1/jobs/{job_id}", headers=b.headers), 404)
        await allowing.sql("UPDATE jobs SET state = 'CANCELLED' WHERE id = $1", uuid.UUID(job_id))
        deliverer = Deliverer(allowing.res.engine, allowing.app.state.settings.webhooks)
        assert await deliverer.deliver_once() == 1
    [request] = got.received
    assert orjson.loads(request.body)["job_id"] == job_id
    assert verify(secret_a, request.headers[SIGNATURE_HEADER], request.body)
    assert not verify(secret_b, request.headers[SIGNATURE_HEADER], request.body)
    rows = await allowing.sql("SELECT tenant_id FROM webhook_deliveries")
    assert {str(row["tenant_id"]) for row in rows} == {a.tenant_id}
    for secret in (secret_a, secret_b):
        assert secret not in repr(events)
        assert secret not in caplog.text
