"""``GET /v1/tenants`` follows the list convention: ``items`` newest first, ``next_cursor``,
``?limit=`` and ``?cursor=``."""

from __future__ import annotations

import uuid

import httpx

from tests.gateway.conftest import ADMIN, make_tenant
from tests.gateway.test_jobs_api import assert_problem


async def test_tenants_are_listed_newest_first_a_page_at_a_time(
    client: httpx.AsyncClient,
) -> None:
    made = [(await make_tenant(client)).tenant_id for _ in range(3)]
    first = await client.get("/v1/tenants", params={"limit": 2}, headers=ADMIN)
    assert first.status_code == 200, first.text
    page = first.json()
    assert set(page) == {"items", "next_cursor"}
    assert [t["id"] for t in page["items"]] == made[:0:-1]
    assert page["next_cursor"]

    seen = [t["id"] for t in page["items"]]
    cursor = page["next_cursor"]
    while cursor:
        r = await client.get("/v1/tenants", params={"limit": 2, "cursor": cursor}, headers=ADMIN)
        assert r.status_code == 200, r.text
        seen += [t["id"] for t in r.json()["items"]]
        cursor = r.json()["next_cursor"]
    assert seen[2] == made[0]
    assert len(seen) == len(set(seen))  # no tenant twice across pages


async def test_the_whole_list_fits_the_default_page(client: httpx.AsyncClient) -> None:
    tid = (await make_tenant(client)).tenant_id
    body = (await client.get("/v1/tenants", headers=ADMIN)).json()
    assert body["items"][0]["id"] == tid
    assert {"id", "name", "weight", "quotas", "suspended", "created_at"} <= set(body["items"][0])


async def test_bad_list_parameters_are_422(client: httpx.AsyncClient) -> None:
    for params in ({"limit": 0}, {"limit": 501}, {"cursor": "zz"}, {"offset": 3}):
        assert_problem(await client.get("/v1/tenants", params=params, headers=ADMIN), 422)
    other = {"Authorization": f"Bearer sk_live_{uuid.uuid4().hex}"}
    assert_problem(await client.get("/v1/tenants", headers=other), 401)
