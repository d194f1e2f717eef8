"""``GET /v1/tenants/{id}/keys`` (the platform admin): a tenant's keys, revoked ones too,
newest first, a page at a time, never a secret or its hash."""

from __future__ import annotations

import uuid

import httpx

from tests.gateway.conftest import ADMIN, make_tenant
from tests.gateway.test_jobs_api import assert_problem


async def test_a_tenants_keys_are_listed_newest_first_without_their_secrets(
    client: httpx.AsyncClient,
) -> None:
    t = await make_tenant(client)  # its first key, "k", all scopes
    made = [t.key_id]
    secrets = [t.key]
    for name, scopes in (("ci", ["jobs:read"]), ("laptop", None)):
        body: dict[str, object] = {"name": name}
        if scopes is not None:
            body["scopes"] = scopes
        r = await client.post(f"/v1/tenants/{t.tenant_id}/keys", json=body, headers=ADMIN)
        assert r.status_code == 201, r.text
        made.append(r.json()["id"])
        secrets.append(r.json()["key"])
    revoked = await client.delete(f"/v1/tenants/{t.tenant_id}/keys/{made[1]}", headers=ADMIN)
    assert revoked.status_code == 204
    other = await make_tenant(client)  # its key is not in the list

    r = await client.get(f"/v1/tenants/{t.tenant_id}/keys", headers=ADMIN)
    assert r.status_code == 200, r.text
    page = r.json()
    assert set(page) == {"items", "next_cursor"}
    assert page["next_cursor"] is None
    items = page["items"]
    assert [k["id"] for k in items] == made[::-1]
    assert other.key_id not in r.text
    for item in items:
        assert set(item) == {"id", "name", "prefix", "scopes", "state", "created_at", "revoked_at"}
    laptop, ci, first = items
    assert (laptop["name"], laptop["state"], laptop["revoked_at"]) == ("laptop", "active", None)
    assert (ci["name"], ci["state"], ci["scopes"]) == ("ci", "revoked", ["jobs:read"])
    assert ci["revoked_at"] >= ci["created_at"]
    assert first["name"] == "k"
    assert len(first["scopes"]) == 4
    for secret, item in zip(secrets, items[::-1], strict=True):
        assert secret.startswith(item["prefix"])
        assert len(item["prefix"]) < len(secret)
        assert secret not in r.text  # no secret, and no hash (no field for one)

    # a page at a time
    first_page = await client.get(
        f"/v1/tenants/{t.tenant_id}/keys", params={"limit": 2}, headers=ADMIN
    )
    assert [k["id"] for k in first_page.json()["items"]] == made[:0:-1]
    cursor = first_page.json()["next_cursor"]
    assert cursor
    rest = await client.get(
        f"/v1/tenants/{t.tenant_id}/keys", params={"limit": 2, "cursor": cursor}, headers=ADMIN
    )
    assert [k["id"] for k in rest.json()["items"]] == made[:1]
    assert rest.json()["next_cursor"] is None


async def test_only_the_admin_lists_keys_of_a_tenant_that_exists(
    client: httpx.AsyncClient,
) -> None:
    t = await make_tenant(client)
    own = {"Authorization": f"Bearer {t.key}"}
    assert_problem(await client.get(f"/v1/tenants/{t.tenant_id}/keys", headers=own), 403)
    assert_problem(await client.get(f"/v1/tenants/{t.tenant_id}/keys"), 401)
    missing = f"/v1/tenants/{uuid.uuid4()}/keys"
    assert_problem(await client.get(missing, headers=ADMIN), 404)
    for params in ({"limit": 0}, {"limit": 501}, {"cursor": "zz"}, {"state": "active"}):
        r = await client.get(f"/v1/tenants/{t.tenant_id}/keys", params=params, headers=ADMIN)
        assert_problem(r, 422)
    assert (await client.get(f"/v1/tenants/{t.tenant_id}/keys", headers=ADMIN)).status_code == 200
    audit = await client.get("/v1/audit", params={"tenant_id": t.tenant_id}, headers=ADMIN)
    assert audit.json()["items"][0]["action"] == "keys.read"
