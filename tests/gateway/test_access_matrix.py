"""The access matrix: every endpoint of the contract (and the admin extras) x every kind of
caller, with the contract's status codes, and nothing of another tenant in any body or header.

Callers: no key, a malformed key, a revoked key, another tenant's key (all scopes), the
owner's own key without the endpoint's scope, the admin key. The owner's job, dataset and
migration are left exactly as they were."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.security import SCOPES, visible_prefix
from tests.gateway.conftest import ADMIN, TenantKey, make_tenant
from tests.gateway.test_jobs_api import MC, assert_problem

Ids = dict[str, str]
Body = Callable[[Ids], dict[str, Any]]
ANY_TENANT = "tenant"  # any tenant key, no particular scope
ANY_KEY = "key"  # any valid key, the admin's included
ADMIN_ONLY = "admin"
CALLERS = ("none", "malformed", "revoked", "other", "noscope", "admin")
DATA = b"matrix-bytes-0123456789"
WORKFLOW = {"name": "matrix", "steps": {"one": MC}}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {job} {dataset} {migration} {tenant} {spare_key}: the owner's; {fresh}: new
    scope: str  # a scope, ANY_TENANT, ANY_KEY or ADMIN_ONLY
    other: int | None = None  # another tenant's key: 404 for the owner's things, 2xx for its own
    ok: tuple[int, ...] = (200,)  # the admin key on an admin endpoint
    json: Body | None = None
    content: bytes | None = None

    @property
    def template(self) -> str:
        return self.path.split("?")[0]


ENDPOINTS = [
    Endpoint("GET", "/v1/kernels", "jobs:read", other=200),
    Endpoint("POST", "/v1/jobs", "jobs:write", other=201, json=lambda _: MC),
    Endpoint("GET", "/v1/jobs", "jobs:read", other=200),
    Endpoint("GET", "/v1/jobs/{job}", "jobs:read", other=404),
    Endpoint("POST", "/v1/jobs/{job}/cancel", "jobs:write", other=404),
    Endpoint("GET", "/v1/jobs/{job}/elements", "jobs:read", other=404),
    Endpoint("GET", "/v1/jobs/{job}/events", "jobs:read", other=404),
    Endpoint("GET", "/v1/jobs/{job}/attempts", "jobs:read", other=404),
    Endpoint("GET", "/v1/jobs/{job}/log", "jobs:read", other=404),
    # the stream narrowed to the owner's job: another tenant's key is a 404, not a stream
    Endpoint("GET", "/v1/events?job={job}", "jobs:read", other=404),
    Endpoint("POST", "/v1/workflows", "jobs:write", other=201, json=lambda _: WORKFLOW),
    Endpoint("GET", "/v1/workflows", "jobs:read", other=200),
    Endpoint("GET", "/v1/workflows/{workflow}", "jobs:read", other=404),
    Endpoint("POST", "/v1/workflows/{workflow}/cancel", "jobs:write", other=404),
    Endpoint("PUT", "/v1/datasets/m/{fresh}.bin", "data:write", other=201, content=DATA),
    Endpoint("GET", "/v1/datasets/{dataset}", "data:read", other=404),
    Endpoint("GET", "/v1/datasets/{dataset}?meta=1", "data:read", other=404),
    Endpoint("GET", "/v1/datasets", "data:read", other=200),
    Endpoint("DELETE", "/v1/datasets/{dataset}", "data:write", other=404),
    Endpoint(
        "POST",
        "/v1/migrations",
        "data:write",
        other=404,  # no such dataset for that tenant
        json=lambda ids: {"dataset": ids["dataset"], "to_tier": "archive", "mode": "copy"},
    ),
    Endpoint("GET", "/v1/migrations", "data:read", other=200),
    Endpoint("GET", "/v1/migrations/{migration}", "data:read", other=404),
    Endpoint("GET", "/v1/usage", "jobs:read", other=200),
    Endpoint("GET", "/v1/tenant", ANY_TENANT, other=200),
    Endpoint("POST", "/v1/tenant/webhook-secret", "jobs:write", other=201),
    Endpoint("GET", "/v1/tiers", ANY_KEY, other=200),
    Endpoint(
        "POST", "/v1/tenants", ADMIN_ONLY, ok=(201,), json=lambda ids: {"name": f"m-{ids['fresh']}"}
    ),
    Endpoint("GET", "/v1/tenants", ADMIN_ONLY),
    Endpoint("GET", "/v1/tenants/{tenant}", ADMIN_ONLY),
    Endpoint("PATCH", "/v1/tenants/{tenant}", ADMIN_ONLY, json=lambda _: {"weight": 1}),
    Endpoint(
        "POST", "/v1/tenants/{tenant}/keys", ADMIN_ONLY, ok=(201,), json=lambda _: {"name": "m"}
    ),
    Endpoint("GET", "/v1/tenants/{tenant}/keys", ADMIN_ONLY),
    Endpoint("DELETE", "/v1/tenants/{tenant}/keys/{spare_key}", ADMIN_ONLY, ok=(204,)),
    Endpoint("GET", "/v1/audit", ADMIN_ONLY),
    Endpoint("GET", "/v1/admin/usage", ADMIN_ONLY),
    Endpoint("GET", "/v1/admin/dead-letters", ADMIN_ONLY),
    # past the access check, a queue that does not exist: one answer whatever other tests
    # left dead-lettered (test_dead_letters redrives a real dead letter)
    Endpoint("POST", "/v1/admin/dead-letters/no-such-queue/redrive", ADMIN_ONLY, ok=(404,)),
]


def expected(ep: Endpoint, caller: str) -> tuple[int, ...]:
    if caller in ("none", "malformed", "revoked"):
        return (401,)
    if ep.scope == ADMIN_ONLY:
        return ep.ok if caller == "admin" else (403,)
    if ep.scope == ANY_KEY and caller in ("admin", "noscope"):
        return (200,)
    if caller == "admin":
        return (403,)  # a tenant endpoint: the admin key is not a tenant's
    if caller == "noscope":
        return (200,) if ep.scope == ANY_TENANT else (403,)
    assert ep.other is not None
    return (ep.other,)


@dataclass
class Owner:
    key: TenantKey
    spare: TenantKey  # a second key of the owner, revoked by the admin row
    ids: Ids

    def secrets(self) -> set[str]:
        """What no other caller may ever see."""
        return {
            self.key.tenant_id,
            self.key.key,
            visible_prefix(self.key.key),
            self.key.key_id,
            self.spare.key,
            self.spare.key_id,
            self.ids["job"],
            self.ids["dataset"],
            self.ids["migration"],
            self.ids["workflow"],
        }


async def owner_with_things(client: httpx.AsyncClient) -> Owner:
    t = await make_tenant(client)
    job = await client.post("/v1/jobs", json=MC, headers=t.headers)
    assert job.status_code == 201, job.text
    dataset = f"private/{uuid.uuid4().hex}.bin"
    put = await client.put(f"/v1/datasets/{dataset}", content=DATA, headers=t.headers)
    assert put.status_code == 201, put.text
    mig = await client.post(
        "/v1/migrations",
        json={"dataset": dataset, "to_tier": "archive", "mode": "copy"},
        headers=t.headers,
    )
    assert mig.status_code == 202, mig.text
    flow = await client.post("/v1/workflows", json=WORKFLOW, headers=t.headers)
    assert flow.status_code == 201, flow.text
    k = await client.post(f"/v1/tenants/{t.tenant_id}/keys", json={"name": "spare"}, headers=ADMIN)
    assert k.status_code == 201, k.text
    spare = TenantKey(t.tenant_id, k.json()["key"], k.json()["id"])
    ids = {
        "tenant": t.tenant_id,
        "job": job.json()["id"],
        "dataset": dataset,
        "migration": mig.json()["id"],
        "workflow": flow.json()["id"],
        "spare_key": spare.key_id,
    }
    return Owner(t, spare, ids)


async def owner_key(client: httpx.AsyncClient, tenant_id: str, scopes: list[str]) -> TenantKey:
    body = {"name": "limited", "scopes": scopes}
    k = await client.post(f"/v1/tenants/{tenant_id}/keys", json=body, headers=ADMIN)
    assert k.status_code == 201, k.text
    return TenantKey(tenant_id, k.json()["key"], k.json()["id"])


async def callers_for(client: httpx.AsyncClient, owner: Owner) -> dict[str, dict[str, str]]:
    revoked = await owner_key(client, owner.key.tenant_id, list(SCOPES))
    r = await client.delete(
        f"/v1/tenants/{owner.key.tenant_id}/keys/{revoked.key_id}", headers=ADMIN
    )
    assert r.status_code == 204
    other = await make_tenant(client)
    await asyncio.sleep(0.3)  # the tenant.changed event empties the key cache
    return {
        "none": {},
        "malformed": {"Authorization": "Bearer sk_live_not-a-real-key-at-all-0000000000000000"},
        "revoked": revoked.headers,
        "other": other.headers,
        "admin": ADMIN,
    }


def assert_nothing_of(owner: Owner, r: httpx.Response, sent: str) -> None:
    """No secret of the owner in the answer, unless the caller sent it itself (a 404 may
    name the id it was asked for)."""
    seen = r.text + "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.items())
    for secret in owner.secrets():
        if secret not in sent:
            assert secret not in seen, (r.request.method, str(r.request.url), secret)


async def test_access_matrix(client: httpx.AsyncClient) -> None:
    owner = await owner_with_things(client)
    callers = await callers_for(client, owner)
    noscope_keys: dict[str, dict[str, str]] = {}
    for scope in {ep.scope for ep in ENDPOINTS}:
        keep = [s for s in SCOPES if s != scope] if scope in SCOPES else ["jobs:read"]
        noscope_keys[scope] = (await owner_key(client, owner.key.tenant_id, keep)).headers
    checked = 0
    for ep in ENDPOINTS:
        for caller in CALLERS:
            ids = {**owner.ids, "fresh": uuid.uuid4().hex}
            url = ep.path.format(**ids)
            body = ep.json(ids) if ep.json else None
            headers = noscope_keys[ep.scope] if caller == "noscope" else callers[caller]
            r = await client.request(ep.method, url, json=body, content=ep.content, headers=headers)
            want = expected(ep, caller)
            assert r.status_code in want, (ep.method, url, caller, r.status_code, r.text)
            if r.status_code >= 400:
                assert_problem(r, r.status_code)
            if r.status_code == 401:
                assert r.headers["www-authenticate"] == "Bearer"
            own = caller == "noscope" and r.status_code < 400  # the owner's own key
            if not own and not (caller == "admin" and ep.scope == ADMIN_ONLY):
                assert_nothing_of(owner, r, url + str(body))
            checked += 1
    assert checked == len(ENDPOINTS) * len(CALLERS)
    await assert_owner_untouched(client, owner)


async def assert_owner_untouched(client: httpx.AsyncClient, owner: Owner) -> None:
    h, ids = owner.key.headers, owner.ids
    job = await client.get(f"/v1/jobs/{ids['job']}", headers=h)
    assert job.status_code == 200
    assert job.json()["state"] == "QUEUED"  # nobody else could cancel it
    data = await client.get(f"/v1/datasets/{ids['dataset']}", headers=h)
    assert (data.status_code, data.content) == (200, DATA)  # nobody else could delete it
    mig = await client.get(f"/v1/migrations/{ids['migration']}", headers=h)
    assert mig.status_code == 200
    jobs = (await client.get("/v1/jobs", headers=h)).json()["items"]
    # the other tenant's submit stayed its own (the workflow's step is the owner's)
    assert [j["id"] for j in jobs if j["workflow_id"] is None] == [ids["job"]]
    flow = await client.get(f"/v1/workflows/{ids['workflow']}", headers=h)
    assert flow.json()["state"] == "RUNNING"  # nobody else could cancel it
    flows = (await client.get("/v1/workflows", headers=h)).json()["items"]
    assert [f["id"] for f in flows] == [ids["workflow"]]
    datasets = (await client.get("/v1/datasets", headers=h)).json()["items"]
    assert [d["name"] for d in datasets] == [ids["dataset"]]
    migrations = (await client.get("/v1/migrations", headers=h)).json()["items"]
    assert [m["id"] for m in migrations] == [ids["migration"]]
    # the spare key was revoked by the admin row, and only by it
    assert (await client.get("/v1/jobs", headers=owner.spare.headers)).status_code == 401


async def test_every_v1_route_is_in_the_matrix(
    client: httpx.AsyncClient, test_env: dict[str, str]
) -> None:
    """Each ``/v1`` operation of the OpenAPI document is a row above; a route added later under
    ``/v1/admin/`` and not listed yet is still checked: 401 without a key, and an error,
    never a 2xx, with a tenant's key."""
    paths = create_app(GatewaySettings()).openapi()["paths"]
    routes = [
        (method.upper(), path)
        for path, item in paths.items()
        if path.startswith("/v1/")
        for method in item
    ]
    listed = {(ep.method, normalise(ep.template)) for ep in ENDPOINTS}
    assert listed <= {(m, normalise(p)) for m, p in routes}  # no row for a route that is gone
    tenant = await make_tenant(client)
    for method, path in routes:
        if (method, normalise(path)) in listed:
            continue
        assert path.startswith("/v1/admin/"), f"{method} {path} is missing from the matrix"
        url = path.replace("{", "").replace("}", "")
        assert (await client.request(method, url)).status_code == 401, (method, url)
        r = await client.request(method, url, headers=tenant.headers)
        assert r.status_code in (403, 422), (method, url, r.status_code)


def normalise(path: str) -> str:
    """``/v1/jobs/{job_id}`` and ``/v1/jobs/{job}`` alike; a fixed queue name as a parameter."""
    parts = path.split("/")
    out = []
    for i, part in enumerate(parts):
        is_param = part.startswith("{") or (parts[i - 1] == "dead-letters" and part != "")
        out.append("{}" if is_param else part)
    joined = "/".join(out)
    return "/v1/datasets/{}" if joined.startswith("/v1/datasets/") else joined
