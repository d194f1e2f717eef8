"""``POST /v1/jobs`` with ``array``: every field and its 422s, each element checked before
anything is stored (a refusal names the element), ``{index}`` in dataset names, quotas
counting elements, idempotent replays, and an array of 100,000 elements stored as two rows."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Job, JobArray
from shared.jobs.arrays import element_id
from shared.jobs.usage import waiting_jobs_sql
from tests.factories import new_job
from tests.gateway.conftest import ADMIN, TenantKey, make_tenant
from tests.gateway.test_jobs_api import assert_problem
from tests.gateway.test_submit_validation import jobs_of, locs, npy, put

MC = {"kernel": "montecarlo_pi", "params": {"samples": 1000}}
ALL_PENDING = {"QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


def sweep(size: int, **array: Any) -> dict[str, Any]:
    return {**MC, "array": {"size": size, **array}}


async def quota_tenant(client: httpx.AsyncClient, max_queued_jobs: int) -> TenantKey:
    t = await make_tenant(client)
    quotas = {"max_queued_jobs": max_queued_jobs, "requests_per_second": 100_000}
    r = await client.patch(f"/v1/tenants/{t.tenant_id}", json={"quotas": quotas}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return t


async def stored(sessions: async_sessionmaker[AsyncSession], t: TenantKey) -> tuple[int, int]:
    """The tenant's ``jobs`` rows and ``job_arrays`` rows."""
    tenant_id = uuid.UUID(t.tenant_id)
    async with sessions() as s:
        arrays = await s.scalar(
            select(func.count()).select_from(JobArray).where(JobArray.tenant_id == tenant_id)
        )
    return await jobs_of(sessions, t), int(arrays or 0)


async def test_an_array_is_one_row_and_its_counts_every_element_pending(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    body = sweep(5, index_param="seed", max_concurrent=2, overrides=[{"samples": 7}])
    r = await client.post("/v1/jobs", json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "PENDING"
    assert job["params"] == {"samples": 1000}  # the template, as given
    assert job["array"]["size"] == 5
    assert (job["array"]["index_param"], job["array"]["max_concurrent"]) == ("seed", 2)
    assert job["array"]["counts"]["PENDING"] == 5
    assert {job["array"]["counts"][s] for s in ALL_PENDING} == {0}
    async with sessions() as s:
        parent = await s.get(Job, uuid.UUID(job["id"]))
        array = await s.get(JobArray, uuid.UUID(job["id"]))
        elements = await s.scalar(
            select(func.count()).select_from(Job).where(Job.array_id == uuid.UUID(job["id"]))
        )
    assert parent is not None
    assert parent.is_array
    assert parent.state == "PENDING"
    assert array is not None
    assert (array.size, array.n_pending, array.next_index, array.cancelled) == (5, 5, 0, False)
    assert array.overrides == [{"samples": 7}]
    assert elements == 0  # the scheduler builds them when it runs them


def with_array(**array: Any) -> dict[str, Any]:
    return {**MC, "array": array}


REFUSED: list[tuple[str, dict[str, Any], list[Any]]] = [
    ("size 0", with_array(size=0), ["body", "array", "size"]),
    ("size over the maximum", with_array(size=100_001), ["body", "array", "size"]),
    ("size a bool", with_array(size=True), ["body", "array", "size"]),
    ("size missing", with_array(index_param="seed"), ["body", "array", "size"]),
    ("unknown field", with_array(size=2, step=1), ["body", "array", "step"]),
    ("max_concurrent 0", with_array(size=2, max_concurrent=0), ["body", "array", "max_concurrent"]),
    (
        "more overrides than elements",
        with_array(size=2, overrides=[{}, {}, {}]),
        ["body", "array", "overrides"],
    ),
    (
        "an override not an object",
        with_array(size=3, overrides=[{}, 3]),
        ["body", "array", "overrides", 1],
    ),
    (
        "a bad override names its element",
        with_array(size=10, overrides=[{}] * 7 + [{"samples": 0}]),
        ["body", "array", "elements", 7, "params", "samples"],
    ),
    (
        "an unknown param in an override",
        with_array(size=4, overrides=[{}, {}, {"bins": 3}]),
        ["body", "array", "elements", 2, "params", "bins"],
    ),
    (
        "a string where the kernel wants an integer",
        with_array(size=3, overrides=[{}, {"samples": "9"}]),
        ["body", "array", "elements", 1, "params", "samples"],
    ),
    (
        "index_param not a param",
        with_array(size=2, index_param="nope"),
        ["body", "array", "index_param"],
    ),
    (
        "index_param whose first index is out of bounds",
        with_array(size=2, index_param="samples"),
        ["body", "array", "elements", 0, "params", "samples"],
    ),
    (
        "{index} in params",
        {
            "kernel": "montecarlo_pi",
            "params": {"samples": 1, "note": "{index}"},
            "array": {"size": 2},
        },
        ["body", "params"],
    ),
    ("{index} in labels", {**sweep(2), "labels": {"run": "{index}"}}, ["body", "labels"]),
]


@pytest.mark.parametrize(("case", "body", "loc"), REFUSED, ids=[c[0] for c in REFUSED])
async def test_a_bad_array_is_a_422_naming_the_field_and_nothing_is_stored(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessions: async_sessionmaker[AsyncSession],
    case: str,
    body: dict[str, Any],
    loc: list[Any],
) -> None:
    problem = assert_problem(await client.post("/v1/jobs", json=body, headers=tenant.headers), 422)
    assert loc in locs(problem), (case, problem)
    assert await stored(sessions, tenant) == (0, 0)


async def test_the_base_params_need_not_be_valid_alone_when_every_element_is(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    body: dict[str, Any] = {
        "kernel": "montecarlo_pi",
        "params": {},
        "array": {"size": 2, "overrides": [{"samples": 1}, {"samples": 2}]},
    }
    r = await client.post("/v1/jobs", json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    body["array"]["size"] = 3  # element 2 has no samples
    problem = assert_problem(await client.post("/v1/jobs", json=body, headers=tenant.headers), 422)
    assert ["body", "array", "elements", 2, "params", "samples"] in locs(problem)


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        ('{"samples": 1, "x": "\\ud800"}', ["body", "array", "elements", 1, "params"]),
        ('{"\\ud800": 1}', ["body", "array", "elements", 1, "params"]),
    ],
    ids=["value", "key"],
)
async def test_a_lone_surrogate_in_an_override_is_a_422(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessions: async_sessionmaker[AsyncSession],
    raw: str,
    loc: list[Any],
) -> None:
    body = '{"kernel": "montecarlo_pi", "params": {"samples": 1}, "array": {"size": 3, '
    body += f'"overrides": [{{}}, {raw}]}}}}'
    headers = {**tenant.headers, "Content-Type": "application/json"}
    r = await client.post("/v1/jobs", content=body.encode(), headers=headers)
    assert loc in locs(assert_problem(r, 422))
    assert await stored(sessions, tenant) == (0, 0)


# --- dataset names ----------------------------------------------------------------------------

STENCIL = {"kernel": "stencil2d", "params": {"iterations": 1}}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (
            {**STENCIL, "inputs": {"grid": "g.npy"}, "outputs": {"grid": "out/{index}.npy"}},
            ["body", "outputs", "grid"],
        ),
        (
            {**STENCIL, "inputs": {"grid": "in/{index}.npy"}, "outputs": {"grid": "o.npy"}},
            ["body", "inputs", "grid"],
        ),
        (
            {
                **STENCIL,
                "inputs": {"grid": "g.npy"},
                "outputs": {"grid": "out.npy"},
                "array": {"size": 2},
            },
            ["body", "outputs", "grid"],
        ),
        (
            {
                **STENCIL,
                "inputs": {"grid": "g.npy"},
                "outputs": {"grid": "out/{i}.npy"},
                "array": {"size": 2},
            },
            ["body", "outputs", "grid"],
        ),
        (
            {
                **STENCIL,
                "inputs": {"grid": "g.npy"},
                "outputs": {"grid": "../{index}.npy"},
                "array": {"size": 2},
            },
            ["body", "outputs", "grid"],
        ),
    ],
    ids=[
        "index-in-a-job",
        "index-in-a-job-input",
        "outputs-without-index",
        "other-braces",
        "dotdot",
    ],
)
async def test_index_only_in_the_dataset_names_of_an_array(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessions: async_sessionmaker[AsyncSession],
    body: dict[str, Any],
    loc: list[Any],
) -> None:
    problem = assert_problem(await client.post("/v1/jobs", json=body, headers=tenant.headers), 422)
    assert loc in locs(problem), problem
    assert await stored(sessions, tenant) == (0, 0)


# --- inputs -----------------------------------------------------------------------------------

SAXPY = {"kernel": "saxpy", "params": {"a": 2.0}}


def saxpy_sweep(size: int) -> dict[str, Any]:
    return {
        **SAXPY,
        "inputs": {"x": "sw/{index}/x.npy", "y": "sw/y.npy"},
        "outputs": {"y": "sw/{index}/y.npy"},
        "array": {"size": size},
    }


async def test_every_element_needs_its_inputs_and_the_ends_their_shapes(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    body = saxpy_sweep(5)
    problem = assert_problem(await client.post("/v1/jobs", json=body, headers=tenant.headers), 422)
    assert ["body", "inputs", "y"] in locs(problem)  # shared by every element
    await put(client, tenant, "sw/y.npy", npy(np.zeros(4)))
    for i in (0, 1, 2):
        await put(client, tenant, f"sw/{i}/x.npy", npy(np.ones(4)))
    await put(client, tenant, "sw/4/x.npy", npy(np.ones(3)))  # the last element's x is short
    problem = assert_problem(await client.post("/v1/jobs", json=body, headers=tenant.headers), 422)
    assert locs(problem) == [["body", "array", "elements", 3, "inputs", "x"]]
    assert "sw/3/x.npy" in str(problem["detail"])
    await put(client, tenant, "sw/3/x.npy", npy(np.ones(4)))
    problem = assert_problem(await client.post("/v1/jobs", json=body, headers=tenant.headers), 422)
    assert ["body", "array", "elements", 4, "inputs", "y"] in locs(problem)
    assert await stored(sessions, tenant) == (0, 0)
    await client.delete("/v1/datasets/sw/4/x.npy", headers=tenant.headers)
    await put(client, tenant, "sw/4/x.npy", npy(np.ones(4)))
    r = await client.post("/v1/jobs", json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    assert r.json()["inputs"] == body["inputs"]  # the templates, as given
    assert r.json()["outputs"] == body["outputs"]


# --- quotas -----------------------------------------------------------------------------------


async def test_each_element_takes_a_place_in_the_queue(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await quota_tenant(client, 10)
    problem = assert_problem(await client.post("/v1/jobs", json=sweep(11), headers=t.headers), 429)
    assert "11 elements" in str(problem["detail"])
    assert await stored(sessions, t) == (0, 0)
    r = await client.post("/v1/jobs", json=sweep(9), headers=t.headers)
    assert r.status_code == 201, r.text
    assert_problem(await client.post("/v1/jobs", json=sweep(2), headers=t.headers), 429)
    single = await client.post("/v1/jobs", json=MC, headers=t.headers)  # the tenth place
    assert single.status_code == 201, single.text
    assert_problem(await client.post("/v1/jobs", json=MC, headers=t.headers), 429)
    assert await stored(sessions, t) == (2, 1)


async def test_an_element_with_a_row_is_counted_once(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """What the scheduler does to an element (a row, QUEUED, then RUNNING) changes what
    waits by exactly what it should: a queued element is still one, a running one none."""
    t = await quota_tenant(client, 100)
    r = await client.post("/v1/jobs", json=sweep(5), headers=t.headers)
    assert r.status_code == 201, r.text
    array_id, tenant_id = uuid.UUID(r.json()["id"]), uuid.UUID(t.tenant_id)
    waiting = text(f"SELECT {waiting_jobs_sql(':t')}")
    async with sessions() as s:
        assert await s.scalar(waiting, {"t": tenant_id}) == 5
        element = new_job(
            tenant_id, id=element_id(array_id, 0), array_id=array_id, array_index=0, state="QUEUED"
        )
        s.add(element)
        await s.commit()
        assert await s.scalar(waiting, {"t": tenant_id}) == 5
        element.state = "RUNNING"
        await s.commit()
        assert await s.scalar(waiting, {"t": tenant_id}) == 4
        s.add(new_job(tenant_id))
        await s.commit()
        assert await s.scalar(waiting, {"t": tenant_id}) == 5


async def test_concurrent_arrays_never_overrun_max_queued_jobs(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await quota_tenant(client, 20)
    answers = await asyncio.gather(
        *(client.post("/v1/jobs", json=sweep(3), headers=t.headers) for _ in range(50))
    )
    codes = [r.status_code for r in answers]
    assert codes.count(201) == 6, codes  # 18 places; a seventh array would need 21
    assert set(codes) <= {201, 429, 503}, codes
    assert codes.count(429) >= 40, codes  # the quota, not overload, refused them
    assert await stored(sessions, t) == (6, 6)
    for expected in (201, 201, 429):  # two places left
        r = await client.post("/v1/jobs", json=MC, headers=t.headers)
        assert r.status_code == expected, r.text


async def test_arrays_and_single_jobs_at_once_share_the_room_exactly(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Single jobs (the group-commit batches) and arrays (a statement each) take their places
    under the same lock: together they never exceed the quota, and the count the quota is
    held to is what they took."""
    t = await quota_tenant(client, 20)
    bodies = [sweep(4) if i % 3 == 0 else MC for i in range(45)]
    answers = await asyncio.gather(
        *(client.post("/v1/jobs", json=b, headers=t.headers) for b in bodies)
    )
    taken = sum(
        (4 if "array" in b else 1)
        for b, r in zip(bodies, answers, strict=True)
        if r.status_code == 201
    )
    assert {r.status_code for r in answers} <= {201, 429, 503}
    assert taken <= 20
    if 503 not in {r.status_code for r in answers}:  # only the quota refused
        assert taken >= 17  # a refused array needs 4: up to 3 places may stay free
    if any(r.status_code == 429 and "array" not in b for b, r in zip(bodies, answers, strict=True)):
        assert taken == 20  # a single job was refused: no place was left
    async with sessions() as s:
        waiting = await s.scalar(
            text(f"SELECT {waiting_jobs_sql(':t')}"), {"t": uuid.UUID(t.tenant_id)}
        )
    assert waiting == taken


# --- idempotency and size ----------------------------------------------------------------------


async def test_a_replayed_array_answers_the_array(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers = {**tenant.headers, "Idempotency-Key": uuid.uuid4().hex}
    body = sweep(4, index_param="seed")
    first = await client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 201, first.text
    again = await client.post("/v1/jobs", json=body, headers=headers)
    assert again.status_code in (200, 201), again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["array"] == first.json()["array"]
    other = sweep(5, index_param="seed")
    assert_problem(await client.post("/v1/jobs", json=other, headers=headers), 422)
    assert await stored(sessions, tenant) == (1, 1)


async def test_an_array_of_100000_elements_is_two_rows(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await quota_tenant(client, 100_000)
    body = sweep(100_000, index_param="seed", max_concurrent=64)
    r = await client.post("/v1/jobs", json=body, headers=t.headers)
    assert r.status_code == 201, r.text
    assert r.json()["array"]["counts"]["PENDING"] == 100_000
    array_id = uuid.UUID(r.json()["id"])
    async with sessions() as s:
        array = await s.get(JobArray, array_id)
        elements = await s.scalar(
            select(func.count()).select_from(Job).where(Job.array_id == array_id)
        )
    assert array is not None
    assert array.n_pending == 100_000
    assert elements == 0
    assert await stored(sessions, t) == (1, 1)
    assert_problem(await client.post("/v1/jobs", json=MC, headers=t.headers), 429)
