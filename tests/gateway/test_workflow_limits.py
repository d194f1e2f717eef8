"""What a dependency or a workflow step may not ask for, each a 422 naming the field, with
nothing created: ``aftercorr`` that does not fit (not two arrays, other sizes, not the
array's only dependency, with ``max_concurrent``), on ``POST /v1/jobs`` and between the steps
of a workflow; and a pinned input on an array (pins are a job's: an array's inputs, ``{index}``
names or not, cannot be pinned). And the quota: jobs that wait on dependencies count toward
a bound of their own, the size of ``max_queued_jobs``, and a tenant's ready and waiting jobs
together toward twice it (429 past it, nothing stored)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.jobs.states import JobState
from tests.gateway.array_rows import MC_JOB, stored_array
from tests.gateway.conftest import TenantKey
from tests.gateway.test_depends_on import after, finish, jobs_of, row, submit
from tests.gateway.test_jobs_api import assert_problem
from tests.gateway.test_pins import saxpy
from tests.gateway.test_quotas_concurrent import limited_tenant
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


async def test_jobs_that_wait_on_dependencies_have_a_bound_of_their_own(
    client: httpx.AsyncClient, sessions: Sessions
) -> None:
    """With ``max_queued_jobs`` 3: three jobs waiting on a dependency are taken though the
    queue holds a ready job, and a fourth is refused; the ready jobs still have their own
    three places; a job whose dependency has ended is ready at once, and counts as such; a
    workflow counts its steps the same way; a refusal stores nothing."""
    t = await limited_tenant(client, 3)
    blocker = await submit(client, t)  # ready (no scheduler here: it stays in the queue)
    waiting = [await submit(client, t, **after(blocker["id"])) for _ in range(3)]
    assert {(w["state"], w["state_reason"]) for w in waiting} == {("PENDING", "dependency")}
    before = await jobs_of(sessions, t)
    r = await client.post("/v1/jobs", json={**MC_JOB, **after(blocker["id"])}, headers=t.headers)
    assert "max_queued_jobs of jobs waiting on dependencies (3)" in str(
        assert_problem(r, 429)["detail"]
    )
    array = {**MC_JOB, "array": {"size": 2, **SEED}, **after(blocker["id"])}
    assert_problem(await client.post("/v1/jobs", json=array, headers=t.headers), 429)
    assert await jobs_of(sessions, t) == before
    # the ready jobs have their own places: two more (three with the blocker), then none
    done = await submit(client, t)
    await finish(sessions, done["id"], JobState.SUCCEEDED)  # ended: no longer in the queue
    await submit(client, t)
    # a dependency that has ended is settled at once: the job is ready, and takes a place
    settled = await submit(client, t, **after(done["id"]))
    assert (await row(sessions, settled["id"])).deps_left == 0
    before = await jobs_of(sessions, t)
    for body in (MC_JOB, {**MC_JOB, **after(done["id"])}):
        r = await client.post("/v1/jobs", json=body, headers=t.headers)
        assert "max_queued_jobs (3) reached" in str(assert_problem(r, 429)["detail"])
    # a workflow: its first step is ready (no room), the second waits (no room either)
    two = {
        "name": "two",
        "steps": {"a": dict(MC_JOB), "b": {**MC_JOB, **on("a", "afterok")}},
    }
    assert_problem(await create(client, t, two), 429)
    assert await jobs_of(sessions, t) == before
    # the waiting jobs released join the ready ones past their room (5 of 3), never refused
    await finish(sessions, blocker["id"], JobState.SUCCEEDED)
    states = {(await row(sessions, w["id"])).deps_left for w in waiting}
    assert states == {0}
    assert_problem(await client.post("/v1/jobs", json=MC_JOB, headers=t.headers), 429)
    # a job that waits still has a place, as long as the tenant holds at most twice its
    # quota in all (5 ready + 1 waiting); a release adds nothing to that
    on_released = {**MC_JOB, **after(waiting[0]["id"])}
    r = await client.post("/v1/jobs", json=on_released, headers=t.headers)
    assert r.status_code == 201, r.text
    r = await client.post("/v1/jobs", json=on_released, headers=t.headers)
    assert "of jobs waiting on dependencies (3) reached" in str(assert_problem(r, 429)["detail"])


async def test_a_workflow_of_waiting_steps_is_not_refused_for_a_full_queue(
    client: httpx.AsyncClient, sessions: Sessions
) -> None:
    t = await limited_tenant(client, 2)
    for _ in range(2):
        await submit(client, t)
    # the queue is full; a workflow whose steps all wait on a job submitted before is taken
    blocker = (await client.get("/v1/jobs", headers=t.headers)).json()["items"][0]["id"]
    steps = {
        "a": {**MC_JOB, "depends_on": [{"job": blocker, "condition": "afterok"}]},
        "b": {**MC_JOB, **on("a", "afterok")},
    }
    r = await create(client, t, {"name": "waits", "steps": steps})
    assert r.status_code == 201, r.text
    # a third waiting step would go past the bound of the waiting ones
    steps["c"] = {**MC_JOB, **on("b", "afterok")}
    before = await counted(sessions, t)
    r = await create(client, t, {"name": "waits", "steps": steps})
    assert "of jobs waiting on dependencies" in str(assert_problem(r, 429)["detail"])
    assert await counted(sessions, t) == before
