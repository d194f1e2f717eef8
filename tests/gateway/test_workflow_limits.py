"""What a dependency or a workflow step may not ask for, each a 422 naming the field, with
nothing created: ``aftercorr`` that does not fit (not two arrays, other sizes, not the
array's only dependency, with ``max_concurrent``), on ``POST /v1/jobs`` and between the steps
of a workflow; and a pinned input on an array (pins are a job's: an array's inputs, ``{index}``
names or not, cannot be pinned)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.gateway.array_rows import MC_JOB, stored_array
from tests.gateway.conftest import TenantKey
from tests.gateway.test_depends_on import jobs_of, submit
from tests.gateway.test_jobs_api import assert_problem
from tests.gateway.test_pins import saxpy
from tests.gateway.test_workflows import counted, create
from tests.gateway.test_workflows_provenance import npy, put

Sessions = async_sessionmaker[AsyncSession]

SEED: dict[str, Any] = {"index_param": "seed"}
CHECKSUM = "xxh3-128:" + "0" * 32


def on(step: str, condition: str = "aftercorr") -> dict[str, Any]:
    return {"depends_on": [{"step": step, "condition": condition}]}


async def test_aftercorr_must_be_the_arrays_only_dependency(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    job = await submit(client, tenant)
    four = await stored_array(sessions, tenant, 4)
    before = await jobs_of(sessions, tenant)
    body: dict[str, Any] = {
        **MC_JOB,
        "array": {"size": 4, **SEED},
        "depends_on": [
            {"job": str(four), "condition": "aftercorr"},
            {"job": job["id"], "condition": "afterok"},
        ],
    }
    r = await client.post("/v1/jobs", json=body, headers=tenant.headers)
    assert assert_problem(r, 422)["errors"] == [
        {
            "loc": ["body", "depends_on", 0, "condition"],
            "msg": "aftercorr must be the array's only dependency",
        }
    ]
    assert await jobs_of(sessions, tenant) == before


async def test_aftercorr_between_steps_that_do_not_fit_is_a_422(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    before = await counted(sessions, tenant)
    a = {**MC_JOB, "array": {"size": 3, **SEED}}
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {**MC_JOB, "array": {"size": 4, **SEED}, **on("a")},
            "aftercorr needs arrays of one size (4 and 3)",
        ),
        ({**MC_JOB, **on("a")}, "aftercorr joins an array to an array"),
        (
            {**MC_JOB, "array": {"size": 3, "max_concurrent": 2, **SEED}, **on("a")},
            "aftercorr cannot be combined with max_concurrent",
        ),
        (
            {
                **MC_JOB,
                "array": {"size": 3, **SEED},
                "depends_on": [
                    {"step": "a", "condition": "aftercorr"},
                    {"step": "c", "condition": "afterok"},
                ],
            },
            "aftercorr must be the array's only dependency",
        ),
    ]
    for b, msg in cases:
        body = {"name": "corr", "steps": {"a": a, "b": b, "c": dict(MC_JOB)}}
        problem = assert_problem(await create(client, tenant, body), 422)
        assert problem["errors"] == [
            {"loc": ["body", "steps", "b", "depends_on", 0, "condition"], "msg": msg}
        ], msg
    # a job step joined to an array step's counterpart the other way round
    body = {"name": "corr", "steps": {"a": dict(MC_JOB), "b": {**a, **on("a")}}}
    problem = assert_problem(await create(client, tenant, body), 422)
    assert problem["errors"] == [
        {
            "loc": ["body", "steps", "b", "depends_on", 0, "condition"],
            "msg": "aftercorr joins an array to an array",
        }
    ]
    assert await counted(sessions, tenant) == before
    # and the same two arrays of one size are accepted
    ok = {"name": "corr", "steps": {"a": a, "b": {**a, **on("a")}}}
    r = await create(client, tenant, ok)
    assert r.status_code == 201, r.text


async def test_an_arrays_inputs_cannot_be_pinned(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    run = uuid.uuid4().hex[:8]
    x, y = f"pin/{run}/x.npy", f"pin/{run}/y.npy"
    x_sum = await put(client, tenant, x, npy([1.0, 2.0]))
    await put(client, tenant, y, npy([3.0, 4.0]))
    for i in range(2):
        await put(client, tenant, f"pin/{run}/y{i}.npy", npy([3.0, 4.0]))
    before = await counted(sessions, tenant)
    pinned = {"dataset": x, "checksum": x_sum}
    cases = [
        # one dataset for every element, with its right checksum
        saxpy(pinned, y, f"pin/{run}/o{{index}}.npy"),
        # a dataset per element: one checksum cannot name them all
        saxpy(
            x,
            {"dataset": f"pin/{run}/y{{index}}.npy", "checksum": CHECKSUM},
            f"pin/{run}/o{{index}}.npy",
        ),
    ]
    for case, name in zip(cases, ("x", "y"), strict=True):
        body = {**case, "array": {"size": 2}}
        r = await client.post("/v1/jobs", json=body, headers=tenant.headers)
        problem = assert_problem(r, 422)
        assert problem["errors"] == [
            {"loc": ["body", "inputs", name, "checksum"], "msg": "not supported on an array"}
        ]
        w = {"name": "pins", "steps": {"s": body}}
        problem = assert_problem(await create(client, tenant, w), 422)
        assert problem["errors"] == [
            {
                "loc": ["body", "steps", "s", "inputs", name, "checksum"],
                "msg": "not supported on an array",
            }
        ]
    assert await counted(sessions, tenant) == before
    # the same pin on a job is accepted
    r = await client.post("/v1/jobs", json=saxpy(pinned, y, f"pin/{run}/o.npy"),
                          headers=tenant.headers)  # fmt: skip
    assert r.status_code == 201, r.text
