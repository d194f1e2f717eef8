"""Every gateway route answers 422 for a query parameter it does not declare, and still takes
the ones it does."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Query
from fastapi.routing import APIRoute
from pydantic import BaseModel

from shared.problems import PROBLEM_BASE
from shared.routing import UNKNOWN, declared_query
from tests.gateway.conftest import ADMIN, TenantKey
from tests.gateway.test_jobs_api import assert_problem

BOGUS = "lable"


def _operations(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (method, path) of the OpenAPI document, path parameters filled in."""
    found = []
    for template, item in doc["paths"].items():
        path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), template)
        found += [(method.upper(), path) for method in item if method != "parameters"]
    return found


async def test_every_route_refuses_an_undeclared_query_parameter(
    client: httpx.AsyncClient,
) -> None:
    doc = (await client.get("/openapi.json")).json()
    operations = _operations(doc)
    assert {"/v1/jobs", "/v1/datasets", "/v1/migrations", "/v1/tenants"} <= set(doc["paths"])
    assert any(p.startswith("/v1/admin/") for p in doc["paths"])
    for method, path in operations:
        r = await client.request(method, f"{path}?{BOGUS}=run:7", headers=ADMIN)
        body = assert_problem(r, 422)
        assert body["errors"] == [{"loc": ["query", BOGUS], "msg": UNKNOWN}], (method, path)
        assert body["type"] == PROBLEM_BASE + "validation-failed"


async def test_each_unknown_name_is_named_once(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    r = await client.get("/v1/jobs?limit=5&kernal=x&kernal=y&sort=asc", headers=tenant.headers)
    body = assert_problem(r, 422)
    assert body["errors"] == [
        {"loc": ["query", "kernal"], "msg": UNKNOWN},
        {"loc": ["query", "sort"], "msg": UNKNOWN},
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs?state=RUNNING&limit=5",
        "/v1/datasets?prefix=a/&limit=2",
        "/v1/migrations?state=PENDING&dataset=a.npy&limit=3",
        "/v1/kernels",
    ],
)
async def test_declared_parameters_still_work(
    client: httpx.AsyncClient, tenant: TenantKey, path: str
) -> None:
    r = await client.get(path, headers=tenant.headers)
    assert r.status_code == 200, r.text


async def test_declared_parameters_of_dataset_routes(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    put = await client.put(
        "/v1/datasets/q/a.bin?tier=local", content=b"abc", headers=tenant.headers
    )
    assert put.status_code == 201, put.text
    meta = await client.get("/v1/datasets/q/a.bin?meta=1", headers=tenant.headers)
    assert meta.status_code == 200, meta.text
    assert meta.json()["size"] == 3


async def test_admin_routes_keep_their_parameters(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/admin/dead-letters?peek=0", headers=ADMIN)).status_code == 200


class Window(BaseModel):
    since: int = 0
    until_: int = Query(0, alias="until")


def test_declared_names_include_dependencies_and_query_models() -> None:
    app = FastAPI()

    async def page(n: int = 1) -> int:
        return n

    @app.get("/x/{id}")
    async def route(
        id: str,
        window: Annotated[Window, Query()],
        labels: Annotated[list[str], Query(alias="label")],
        n: Annotated[int, Depends(page)],
        q: str = "",
    ) -> None:
        return None

    (found,) = [r for r in app.routes if isinstance(r, APIRoute) and r.path == "/x/{id}"]
    assert declared_query(found.dependant) == {"since", "until", "label", "n", "q"}
