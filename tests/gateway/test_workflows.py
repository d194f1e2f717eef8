"""``/v1/workflows``: a graph of steps created in one transaction, released step by step by
the dependencies' trigger, its state following its steps; a cycle, an unknown step or a
step that fails its checks is a 422 with nothing created; idempotent; cancel; tenancy."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Job, Workflow
from shared.jobs.states import JobState
from tests.gateway.array_rows import MC_JOB, get, materialise, move
from tests.gateway.conftest import TenantKey, make_tenant
from tests.gateway.test_depends_on import finish, row, submit
from tests.gateway.test_jobs_api import assert_problem

Sessions = async_sessionmaker[AsyncSession]


def plate(**steps: dict[str, Any]) -> dict[str, Any]:
    """init -> heat -> stats, each a montecarlo_pi job; ``steps`` override or add steps."""
    body: dict[str, Any] = {
        "name": "plate-study",
        "steps": {
            "init": dict(MC_JOB),
            "heat": {**MC_JOB, "depends_on": [{"step": "init", "condition": "afterok"}]},
            "stats": {**MC_JOB, "depends_on": [{"step": "heat", "condition": "afterok"}]},
        },
    }
    body["steps"].update(steps)
    return body


async def create(
    client: httpx.AsyncClient, tenant: TenantKey, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post("/v1/workflows", json=body, headers={**tenant.headers, **headers})


async def counted(sessions: Sessions, tenant: TenantKey) -> tuple[int, int]:
    """The tenant's workflows and jobs."""
    tid = uuid.UUID(tenant.tenant_id)
    async with sessions() as s:
        w = await s.scalar(
            select(func.count()).select_from(Workflow).where(Workflow.tenant_id == tid)
        )
        j = await s.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tid))
    return int(w or 0), int(j or 0)


async def test_a_workflow_runs_step_by_step_and_fails_with_its_step(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    r = await create(client, tenant, plate())
    assert r.status_code == 201, r.text
    w = r.json()
    assert r.headers["Location"] == f"/v1/workflows/{w['id']}"
    assert set(w) >= {"id", "name", "state", "steps", "created_at", "finished_at"}
    assert w["name"] == "plate-study"
    assert set(w["steps"]) == {"init", "heat", "stats"}
    assert w["state"] == "RUNNING"  # init, reading no dataset, is queued at once
    assert w["finished_at"] is None
    init, heat, stats = (w["steps"][n] for n in ("init", "heat", "stats"))
    body = await get(client, tenant, f"/v1/jobs/{heat}")
    assert (body["state"], body["state_reason"]) == ("PENDING", "dependency")
    assert body["workflow_id"] == w["id"]
    assert body["depends_on"] == [{"job": init, "condition": "afterok"}]
    await finish(sessions, init, JobState.SUCCEEDED)
    assert (await row(sessions, heat)).deps_left == 0
    assert (await row(sessions, stats)).deps_left == 1
    await finish(sessions, heat, JobState.FAILED)
    body = await get(client, tenant, f"/v1/jobs/{stats}")
    assert (body["state"], body["state_reason"]) == ("CANCELLED", "dependency_never_satisfied")
    w = await get(client, tenant, f"/v1/workflows/{w['id']}")
    assert w["state"] == "FAILED"
    assert w["finished_at"] is not None
    assert w["counts"]["SUCCEEDED"] == 1
    assert w["counts"]["CANCELLED"] == 1


async def test_a_workflow_that_succeeds(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    array = {**MC_JOB, "array": {"size": 2, "index_param": "seed"}}
    body = plate(init=array)
    w = (await create(client, tenant, body)).json()
    assert w["state"] == "PENDING"  # the array waits for the scheduler, the rest on it
    # the array ends (its state is its elements', as the counts' trigger writes it)
    await finish_array(sessions, w["steps"]["init"])
    for name in ("heat", "stats"):
        await finish(sessions, w["steps"][name], JobState.SUCCEEDED)
    w = await get(client, tenant, f"/v1/workflows/{w['id']}")
    assert w["state"] == "SUCCEEDED"


async def finish_array(sessions: Sessions, array_id: str) -> None:
    aid = uuid.UUID(array_id)
    async with sessions() as s, s.begin():
        await materialise(s, aid, 2, JobState.QUEUED)
    for i in range(2):
        await move(sessions, aid, i, JobState.RUNNING, JobState.SUCCEEDED)
    assert (await row(sessions, aid)).state == "SUCCEEDED"


async def test_an_unknown_step_a_cycle_or_a_bad_step_is_a_422_with_nothing_created(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    before = await counted(sessions, tenant)
    unknown = plate(stats={**MC_JOB, "depends_on": [{"step": "nope", "condition": "afterok"}]})
    body = assert_problem(await create(client, tenant, unknown), 422)
    assert body["errors"] == [
        {"loc": ["body", "steps", "stats", "depends_on", 0, "step"], "msg": "no such step: 'nope'"}
    ]
    cycle = plate(init={**MC_JOB, "depends_on": [{"step": "stats", "condition": "afterany"}]})
    body = assert_problem(await create(client, tenant, cycle), 422)
    assert "cycle" in str(body["detail"])
    self_loop = plate(stats={**MC_JOB, "depends_on": [{"step": "stats", "condition": "afterok"}]})
    assert_problem(await create(client, tenant, self_loop), 422)
    both = plate(stats={**MC_JOB, "depends_on": [{"condition": "afterok"}]})
    assert_problem(await create(client, tenant, both), 422)
    bad = plate(stats={**MC_JOB, "params": {"samples": 0, "seed": 1}})
    body = assert_problem(await create(client, tenant, bad), 422)
    errors: list[dict[str, Any]] = body["errors"]  # type: ignore[assignment]
    assert all(e["loc"][:3] == ["body", "steps", "stats"] for e in errors)
    other = await make_tenant(client)
    theirs = await submit(client, other)
    foreign = plate(stats={**MC_JOB, "depends_on": [{"job": theirs["id"], "condition": "afterok"}]})
    body = assert_problem(await create(client, tenant, foreign), 422)
    assert body["errors"] == [
        {
            "loc": ["body", "steps", "stats", "depends_on", 0, "job"],
            "msg": f"no such job: {theirs['id']!r}",
        }
    ]
    assert await counted(sessions, tenant) == before


async def test_a_step_may_wait_on_a_job_submitted_before(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    first = await submit(client, tenant)
    body = plate(init={**MC_JOB, "depends_on": [{"job": first["id"], "condition": "afterok"}]})
    w = (await create(client, tenant, body)).json()
    assert w["state"] == "PENDING"
    await finish(sessions, first["id"], JobState.SUCCEEDED)
    assert (await row(sessions, w["steps"]["init"])).deps_left == 0


async def test_the_idempotency_key_is_honoured(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    key = {"Idempotency-Key": f"wf-{uuid.uuid4()}"}
    first = await create(client, tenant, plate(), **key)
    assert first.status_code == 201, first.text
    before = await counted(sessions, tenant)
    again = await create(client, tenant, plate(), **key)
    assert again.status_code == 201, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["steps"] == first.json()["steps"]
    other = await create(client, tenant, {**plate(), "name": "another"}, **key)
    body = assert_problem(other, 422)
    assert str(body["type"]).endswith("/idempotency-key-reused")
    assert await counted(sessions, tenant) == before


async def test_cancel_ends_every_step_and_a_final_workflow_is_a_409(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    w = (await create(client, tenant, plate())).json()
    await finish(sessions, w["steps"]["init"], JobState.SUCCEEDED)
    r = await client.post(f"/v1/workflows/{w['id']}/cancel", headers=tenant.headers)
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "CANCELLED"
    assert r.json()["finished_at"] is not None
    for name, state in (("init", "SUCCEEDED"), ("heat", "CANCELLED"), ("stats", "CANCELLED")):
        assert (await get(client, tenant, f"/v1/jobs/{w['steps'][name]}"))["state"] == state
    again = await client.post(f"/v1/workflows/{w['id']}/cancel", headers=tenant.headers)
    assert_problem(again, 409)


async def test_another_tenants_workflow_is_a_404_and_lists_are_paged(
    client: httpx.AsyncClient, sessions: Sessions
) -> None:
    mine, theirs = await make_tenant(client), await make_tenant(client)
    ids = [(await create(client, mine, plate())).json()["id"] for _ in range(3)]
    for path in (f"/v1/workflows/{ids[0]}", "/v1/workflows/not-a-uuid"):
        assert_problem(await client.get(path, headers=theirs.headers), 404)
    r = await client.post(f"/v1/workflows/{ids[0]}/cancel", headers=theirs.headers)
    assert_problem(r, 404)
    assert (await get(client, theirs, "/v1/workflows"))["items"] == []
    page = await get(client, mine, "/v1/workflows?limit=2")
    assert [w["id"] for w in page["items"]] == ids[::-1][:2]
    rest = await get(client, mine, f"/v1/workflows?limit=2&cursor={page['next_cursor']}")
    assert [w["id"] for w in rest["items"]] == ids[:1]
    assert rest["next_cursor"] is None
    assert_problem(await client.get("/v1/workflows?bogus=1", headers=mine.headers), 422)
