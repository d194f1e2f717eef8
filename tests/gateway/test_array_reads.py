"""Arrays and their elements through the job routes, on the real database: an array with its
counts, elements with a row and virtual ones, the elements' pages across that boundary, the
jobs list, `/v1/usage` and `/v1/tenant` counting elements, the document, and every other
tenant's id or a malformed one answered 404."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.jobs.arrays import element_id, public_id
from shared.jobs.states import JobState
from tests.gateway.array_rows import MC_JOB, counts, get, materialise, move, stored_array
from tests.gateway.conftest import TenantKey, make_tenant
from tests.gateway.test_jobs_api import assert_problem


async def test_an_array_shows_its_settings_and_counts(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    aid = await stored_array(sessions, tenant, 5)
    body = await get(client, tenant, f"/v1/jobs/{aid}")
    assert body["id"] == str(aid)
    assert body["state"] == "PENDING"
    assert body["array_id"] is None
    assert body["array_index"] is None
    assert body["array"] == {
        "size": 5,
        "index_param": "seed",
        "max_concurrent": 4,
        "counts": counts(pending=5),
    }


async def test_counts_and_state_follow_the_elements(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    aid = await stored_array(sessions, tenant, 5, materialised=3)
    body = await get(client, tenant, f"/v1/jobs/{aid}")
    assert body["state"] == "RUNNING"  # an element is queued
    assert body["array"]["counts"] == counts(pending=2, queued=3)
    await move(sessions, aid, 0, JobState.RUNNING, JobState.SUCCEEDED)
    await move(sessions, aid, 1, JobState.RUNNING)
    await move(sessions, aid, 2, JobState.CANCELLED)
    body = await get(client, tenant, f"/v1/jobs/{aid}")
    assert body["array"]["counts"] == counts(pending=2, running=1, succeeded=1, cancelled=1)
    assert body["state"] == "RUNNING"
    assert body["started_at"] is not None
    assert body["finished_at"] is None


async def test_an_element_with_a_row_and_one_without(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    aid = await stored_array(sessions, tenant, 5, materialised=1)
    await move(sessions, aid, 0, JobState.RUNNING)
    row = await get(client, tenant, f"/v1/jobs/{aid}:0")
    assert row["id"] == f"{aid}:0"
    assert (row["array_id"], row["array_index"]) == (str(aid), 0)
    assert (row["state"], row["attempts"], row["worker"]) == ("RUNNING", 1, "w1")
    assert row["params"] == {"samples": 1, "seed": 0}
    assert row["outputs"] == {"out": "sweep/0/out.npy"}
    assert row["array"] is None
    # The element's own row id names the same element.
    same = await get(client, tenant, f"/v1/jobs/{element_id(aid, 0)}")
    assert same["id"] == f"{aid}:0"
    assert same["state"] == "RUNNING"
    virtual = await get(client, tenant, f"/v1/jobs/{aid}:2")
    assert virtual["id"] == f"{aid}:2"
    assert (virtual["array_id"], virtual["array_index"]) == (str(aid), 2)
    assert (virtual["state"], virtual["attempts"], virtual["result"]) == ("PENDING", 0, None)
    assert virtual["params"] == {"samples": 3, "seed": 2}
    assert virtual["outputs"] == {"out": "sweep/2/out.npy"}
    assert virtual["labels"] == {"sweep": "a"}
    past_overrides = await get(client, tenant, f"/v1/jobs/{aid}:4")
    assert past_overrides["params"] == {"samples": 10, "seed": 4}


async def test_ids_that_name_no_job_are_404(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    aid = await stored_array(sessions, tenant, 3)
    plain = (await client.post("/v1/jobs", json=MC_JOB, headers=tenant.headers)).json()["id"]
    bad = [
        "nope",
        f"{aid}:",
        f"{aid}:-1",
        f"{aid}:x",
        f"{aid}:1:2",
        f"{aid}:3",  # past the last element
        f"{aid}:1234567890",
        f"{aid}:{'9' * 100}",
        "x" * 300,
        f"{plain}:0",  # not an array
        str(uuid.uuid4()),
        f"{uuid.uuid4()}:0",
    ]
    for job_id in bad:
        assert_problem(await client.get(f"/v1/jobs/{job_id}", headers=tenant.headers), 404)
        assert_problem(await client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers), 404)
        assert_problem(await client.get(f"/v1/jobs/{job_id}/elements", headers=tenant.headers), 404)
    # The elements of an element, or of a job that is not an array.
    for job_id in (f"{aid}:0", plain):
        assert_problem(await client.get(f"/v1/jobs/{job_id}/elements", headers=tenant.headers), 404)
    body = await get(client, tenant, f"/v1/jobs/{aid}")
    assert body["array"]["counts"] == counts(pending=3)  # nothing was cancelled


async def test_another_tenants_array_and_elements_are_404(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    aid = await stored_array(sessions, tenant, 4, materialised=2)
    other = await make_tenant(client)
    h = other.headers
    for job_id in (str(aid), f"{aid}:0", f"{aid}:3", str(element_id(aid, 0))):
        assert_problem(await client.get(f"/v1/jobs/{job_id}", headers=h), 404)
        assert_problem(await client.post(f"/v1/jobs/{job_id}/cancel", headers=h), 404)
    assert_problem(await client.get(f"/v1/jobs/{aid}/elements", headers=h), 404)
    assert (await get(client, other, "/v1/jobs"))["items"] == []
    body = await get(client, tenant, f"/v1/jobs/{aid}")
    assert body["array"]["counts"] == counts(pending=2, queued=2)
    assert body["state"] == "RUNNING"


async def pages(
    client: httpx.AsyncClient, tenant: TenantKey, aid: uuid.UUID, query: str, limit: int
) -> list[list[dict[str, Any]]]:
    """Every page of the array's elements for ``query``, following ``next_cursor``."""
    found: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        path = f"/v1/jobs/{aid}/elements?limit={limit}{query}"
        body = await get(client, tenant, path + (f"&cursor={cursor}" if cursor else ""))
        found.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return found


async def test_element_pages_cross_from_rows_to_virtual_elements(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    aid = await stored_array(sessions, tenant, 7, materialised=2)
    async with sessions() as s, s.begin():
        await materialise(s, aid, 1, JobState.PENDING)  # index 2: waits for admission
    r = await client.post(f"/v1/jobs/{aid}:5/cancel", headers=tenant.headers)
    assert r.status_code == 202, r.text  # a row ahead of the materialised ones
    every = await pages(client, tenant, aid, "", limit=2)
    assert [len(p) for p in every] == [2, 2, 2, 1]
    items = [e for p in every for e in p]
    assert [e["id"] for e in items] == [public_id(aid, i) for i in range(7)]
    assert [e["state"] for e in items] == [
        "QUEUED",
        "QUEUED",
        "PENDING",
        "PENDING",
        "PENDING",
        "CANCELLED",
        "PENDING",
    ]
    assert [e["params"]["seed"] for e in items] == list(range(7))
    pending = await pages(client, tenant, aid, "&state=PENDING", limit=3)
    assert [[e["array_index"] for e in p] for p in pending] == [[2, 3, 4], [6]]
    queued = await pages(client, tenant, aid, "&state=QUEUED", limit=50)
    assert [[e["array_index"] for e in p] for p in queued] == [[0, 1]]
    cancelled = await pages(client, tenant, aid, "&state=CANCELLED", limit=50)
    assert [[e["array_index"] for e in p] for p in cancelled] == [[5]]
    assert await pages(client, tenant, aid, "&state=RUNNING", limit=50) == [[]]
    late = await get(client, tenant, f"/v1/jobs/{aid}/elements?cursor=6")
    assert [e["array_index"] for e in late["items"]] == [6]
    assert late["next_cursor"] is None


@pytest.mark.parametrize(
    "query",
    ["state=DONE", "limit=0", "limit=501", "cursor=abc", "cursor=-1", "sort=index", "job=1"],
)
async def test_bad_element_queries_are_422(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessions: async_sessionmaker[AsyncSession],
    query: str,
) -> None:
    aid = await stored_array(sessions, tenant, 2)
    r = await client.get(f"/v1/jobs/{aid}/elements?{query}", headers=tenant.headers)
    assert_problem(r, 422)


async def test_the_jobs_list_shows_an_array_once(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant = await make_tenant(client)
    plain = (await client.post("/v1/jobs", json=MC_JOB, headers=tenant.headers)).json()["id"]
    aid = await stored_array(sessions, tenant, 4, materialised=3)
    items = (await get(client, tenant, "/v1/jobs"))["items"]
    assert {j["id"] for j in items} == {plain, str(aid)}
    array = next(j for j in items if j["id"] == str(aid))
    assert array["array"]["counts"] == counts(pending=1, queued=3)
    # A filter applies to the array's own row, never to its elements.
    running = (await get(client, tenant, "/v1/jobs?state=RUNNING"))["items"]
    assert [j["id"] for j in running] == [str(aid)]
    queued = (await get(client, tenant, "/v1/jobs?state=QUEUED"))["items"]
    assert [j["id"] for j in queued] == [plain]  # QUEUED at submission; no element listed
    labelled = (await get(client, tenant, "/v1/jobs?label=sweep:a"))["items"]
    assert [j["id"] for j in labelled] == [str(aid)]


async def test_usage_counts_elements_not_arrays(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant = await make_tenant(client)
    assert (await client.post("/v1/jobs", json=MC_JOB, headers=tenant.headers)).status_code == 201
    aid = await stored_array(sessions, tenant, 10, materialised=3)
    await move(sessions, aid, 0, JobState.RUNNING, JobState.SUCCEEDED)
    await move(sessions, aid, 1, JobState.RUNNING)
    r = await client.post(f"/v1/jobs/{aid}:8/cancel", headers=tenant.headers)
    assert r.status_code == 202, r.text
    other = await stored_array(sessions, tenant, 2)
    r = await client.post(f"/v1/jobs/{other}/cancel", headers=tenant.headers)
    assert r.status_code == 202, r.text
    jobs = (await get(client, tenant, "/v1/usage"))["jobs"]
    # 6 virtual elements pending, the plain job (no inputs: QUEUED at submission) and the
    # rows of 3, 1 + 2 cancelled
    assert jobs == counts(pending=6, queued=2, running=1, succeeded=1, cancelled=3)
    assert sum(jobs.values()) == 1 + 10 + 2
    later = (await get(client, tenant, "/v1/usage?since=2999-01-01T00:00:00Z"))["jobs"]
    assert later == counts()
    quotas = (await get(client, tenant, "/v1/tenant"))["usage"]
    # waiting: the plain job, 6 virtual elements and the queued one; in flight: the running one
    assert quotas["max_queued_jobs"]["used"] == 8
    assert quotas["max_running_jobs"]["used"] == 1


async def test_the_document_describes_job_ids_and_element_pages(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    for path in ("/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/elements"):
        item = doc["paths"][path]
        operation = item.get("get") or item["post"]
        job_id = next(p for p in operation["parameters"] if p["name"] == "job_id")
        pattern = job_id["schema"]["pattern"]
        assert pattern.endswith("(:[0-9]{1,9})?$"), path
        assert "404" in operation["responses"]
    elements = doc["paths"]["/v1/jobs/{job_id}/elements"]["get"]
    cursor = next(p for p in elements["parameters"] if p["name"] == "cursor")
    assert "stratus-cursor" not in str(cursor["schema"])  # an index, not an opaque cursor
