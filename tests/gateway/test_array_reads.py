"""Arrays and their elements through the job routes, on the real database: an array with its
counts, elements with a row and virtual ones, the elements' pages across that boundary, the
jobs list, cancel of an array and of an element, ``/v1/usage`` counting elements, and every
other tenant's id or a malformed one answered 404."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.gateway.jobs import cancel
from shared.db.models import Job, JobArray, JobEvent, Outbox
from shared.events import utcnow
from shared.jobs.arrays import element_id, element_of, public_id
from shared.jobs.proposals import Cancelled, Claimed, Report, Reported
from shared.jobs.states import JobState
from shared.jobs.store import set_job_state
from tests.factories import new_array, new_job
from tests.gateway.conftest import TenantKey, make_tenant
from tests.gateway.test_jobs_api import assert_problem

PARAMS = {"samples": 10, "seed": 0}
OVERRIDES = [{"samples": 1}, {}, {"samples": 3}]
OUTPUTS = {"out": "sweep/{index}/out.npy"}
STATES = [s.value for s in JobState]


async def stored_array(
    sessions: async_sessionmaker[AsyncSession],
    tenant: TenantKey,
    size: int,
    *,
    materialised: int = 0,
    state: JobState = JobState.QUEUED,
) -> uuid.UUID:
    """An array of ``size`` montecarlo_pi elements (``seed`` the index, three overrides),
    its first ``materialised`` elements given rows in ``state`` as the scheduler does."""
    async with sessions() as s, s.begin():
        job, array = new_array(
            uuid.UUID(tenant.tenant_id),
            size,
            index_param="seed",
            max_concurrent=4,
            overrides=OVERRIDES,
            params=PARAMS,
            outputs=OUTPUTS,
            labels={"sweep": "a"},
        )
        s.add(job)
        await s.flush()
        s.add(array)
        await s.flush()
        if materialised:
            await materialise(s, job.id, materialised, state)
    return job.id


async def materialise(
    session: AsyncSession, array_id: uuid.UUID, count: int, state: JobState
) -> list[uuid.UUID]:
    """The next ``count`` elements of the array as rows in ``state`` (the scheduler's
    materialisation: ``element_of``, the parent's columns and ``created_at``)."""
    parent = await session.get(Job, array_id)
    array = await session.get(JobArray, array_id)
    assert parent is not None
    assert array is not None
    rows = []
    for i in range(array.next_index, array.next_index + count):
        e = element_of(
            params=parent.params,
            inputs=parent.inputs,
            outputs=parent.outputs,
            index=i,
            index_param=array.index_param,
            overrides=array.overrides,
        )
        rows.append(
            new_job(
                parent.tenant_id,
                id=element_id(parent.id, i),
                params=e.params,
                inputs=e.inputs,
                outputs=e.outputs,
                labels=parent.labels,
                timeout_s=parent.timeout_s,
                max_retries=parent.max_retries,
                state=state.value,
                created_at=parent.created_at,
                queued_at=utcnow() if state is JobState.QUEUED else None,
                array_id=parent.id,
                array_index=i,
            )
        )
    session.add_all(rows)
    array.next_index += count
    await session.flush()
    return [r.id for r in rows]


async def move(
    sessions: async_sessionmaker[AsyncSession], array_id: uuid.UUID, index: int, *to: JobState
) -> None:
    """Element ``index`` through ``to`` (RUNNING, SUCCEEDED, FAILED, CANCELLED), one
    ``set_job_state`` each, as the worker and the user move a job."""
    job_id = element_id(array_id, index)
    for state in to:
        async with sessions() as s, s.begin():
            proposal: Any
            if state is JobState.RUNNING:
                proposal = Claimed("w1", 60)
            elif state is JobState.CANCELLED:
                proposal = Cancelled()
            else:
                job = await s.get(Job, job_id)
                assert job is not None
                proposal = Reported(job.attempts, "w1", Report(state, retryable=False))
            assert (await set_job_state(s, job_id, proposal)).accepted


def counts(**given: int) -> dict[str, int]:
    return {s: given.get(s.lower(), 0) for s in STATES}


async def get(client: httpx.AsyncClient, tenant: TenantKey, path: str) -> dict[str, Any]:
    r = await client.get(path, headers=tenant.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


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


MC_JOB = {"kernel": "montecarlo_pi", "params": {"samples": 1000, "seed": 1}}


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
    assert queued == []
    labelled = (await get(client, tenant, "/v1/jobs?label=sweep:a"))["items"]
    assert [j["id"] for j in labelled] == [str(aid)]


async def cancelled_events(session: AsyncSession) -> set[str]:
    """The job ids of the ``job.cancelled`` events in the outbox, as this transaction sees
    them (staged, not yet committed: the relay cannot have taken them)."""
    bodies = (
        await session.execute(select(Outbox.body).where(Outbox.routing_key == "job.cancelled"))
    ).scalars()
    return {orjson.loads(b)["job_id"] for b in bodies}


async def test_cancel_an_array_with_running_and_virtual_elements(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    aid = await stored_array(sessions, tenant, 8, materialised=4)
    await move(sessions, aid, 0, JobState.RUNNING, JobState.SUCCEEDED)
    await move(sessions, aid, 1, JobState.RUNNING)
    await move(sessions, aid, 2, JobState.RUNNING)
    assert (await client.post(f"/v1/jobs/{aid}:6/cancel", headers=tenant.headers)).status_code
    async with sessions() as s, s.begin():
        before = await cancelled_events(s)
        out = await cancel.cancel(
            session=s, tenant_id=uuid.UUID(tenant.tenant_id), text_id=str(aid)
        )
        staged = await cancelled_events(s) - before
    # Each materialised element that was not final (running 1 and 2, queued 3) is told to stop.
    assert staged == {str(element_id(aid, i)) for i in (1, 2, 3)}
    assert out.state == "CANCELLED"
    assert out.array is not None
    assert out.array.counts == counts(succeeded=1, cancelled=7)
    body = await get(client, tenant, f"/v1/jobs/{aid}")
    assert body["state"] == "CANCELLED"
    assert body["finished_at"] is not None
    assert body["array"]["counts"] == counts(succeeded=1, cancelled=7)
    items = (await get(client, tenant, f"/v1/jobs/{aid}/elements"))["items"]
    assert [e["state"] for e in items] == ["SUCCEEDED"] + ["CANCELLED"] * 7
    assert (await get(client, tenant, f"/v1/jobs/{aid}:7"))["state"] == "CANCELLED"
    async with sessions() as s:
        array = await s.get(JobArray, aid)
        assert array is not None
        assert array.cancelled
        assert array.next_index == 4
        history = (
            await s.execute(
                select(JobEvent.from_state, JobEvent.to_state).where(
                    JobEvent.job_id == element_id(aid, 1)
                )
            )
        ).all()
    assert [tuple(h) for h in history][-1] == ("RUNNING", "CANCELLED")
    for job_id in (str(aid), f"{aid}:0", f"{aid}:1", f"{aid}:7"):
        r = await client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)
        assert_problem(r, 409)


async def test_cancel_an_array_over_http(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    aid = await stored_array(sessions, tenant, 3)
    r = await client.post(f"/v1/jobs/{aid}/cancel", headers=tenant.headers)
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "CANCELLED"
    assert r.json()["array"]["counts"] == counts(cancelled=3)
    assert_problem(await client.post(f"/v1/jobs/{aid}/cancel", headers=tenant.headers), 409)


async def test_cancel_one_element_with_a_row_or_without(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    aid = await stored_array(sessions, tenant, 6, materialised=2)
    await move(sessions, aid, 0, JobState.RUNNING)
    r = await client.post(f"/v1/jobs/{aid}:0/cancel", headers=tenant.headers)
    assert r.status_code == 202, r.text
    assert (r.json()["id"], r.json()["state"]) == (f"{aid}:0", "CANCELLED")
    r = await client.post(f"/v1/jobs/{aid}:4/cancel", headers=tenant.headers)
    assert r.status_code == 202, r.text
    virtual = r.json()
    assert (virtual["id"], virtual["state"], virtual["array_index"]) == (f"{aid}:4", "CANCELLED", 4)
    assert virtual["params"] == {"samples": 10, "seed": 4}
    assert virtual["outputs"] == {"out": "sweep/4/out.npy"}
    assert virtual["finished_at"] is not None
    for index in (0, 4):
        assert_problem(
            await client.post(f"/v1/jobs/{aid}:{index}/cancel", headers=tenant.headers), 409
        )
    async with sessions() as s:
        row = await s.get(Job, element_id(aid, 4))
        assert row is not None
        assert (row.array_id, row.array_index, row.is_array) == (aid, 4, False)
        parent = await s.get(Job, aid)
        assert parent is not None
        assert row.created_at == parent.created_at
        history = (
            await s.execute(
                select(JobEvent.from_state, JobEvent.to_state).where(JobEvent.job_id == row.id)
            )
        ).all()
    assert [tuple(h) for h in history] == [("PENDING", "CANCELLED")]
    body = await get(client, tenant, f"/v1/jobs/{aid}")
    assert body["array"]["counts"] == counts(pending=3, queued=1, cancelled=2)
    assert body["state"] == "RUNNING"
    # The array's cancel then counts each element once: the one cancelled alone stays one.
    r = await client.post(f"/v1/jobs/{aid}/cancel", headers=tenant.headers)
    assert r.status_code == 202, r.text
    assert r.json()["array"]["counts"] == counts(cancelled=6)


async def test_usage_counts_elements_not_arrays(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant = await make_tenant(client)
    assert (await client.post("/v1/jobs", json=MC_JOB, headers=tenant.headers)).status_code == 201
    aid = await stored_array(sessions, tenant, 10, materialised=3)
    await move(sessions, aid, 0, JobState.RUNNING, JobState.SUCCEEDED)
    await move(sessions, aid, 1, JobState.RUNNING)
    assert (await client.post(f"/v1/jobs/{aid}:8/cancel", headers=tenant.headers)).status_code
    other = await stored_array(sessions, tenant, 2)
    assert (await client.post(f"/v1/jobs/{other}/cancel", headers=tenant.headers)).status_code
    jobs = (await get(client, tenant, "/v1/usage"))["jobs"]
    # the plain job and 6 virtual elements pending, the rows of 3, 1 + 2 cancelled
    assert jobs == counts(pending=7, queued=1, running=1, succeeded=1, cancelled=3)
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
