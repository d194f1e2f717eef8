"""``depends_on`` on ``POST /v1/jobs``: a job waits PENDING ("dependency"), is released or
cancelled ("dependency_never_satisfied", transitively) when its dependencies end, on the
real database; refs that are unknown, another tenant's or do not fit are a 422 with nothing
created."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Job, JobDep, JobEvent
from shared.jobs.arrays import element_id
from shared.jobs.materialise import materialise_elements
from shared.jobs.proposals import Cancelled, Claimed, Report, Reported
from shared.jobs.states import JobState
from shared.jobs.store import admit_pending, session_fetch, set_job_state
from tests.gateway.array_rows import MC_JOB, get, move, stored_array
from tests.gateway.conftest import TenantKey, make_tenant
from tests.gateway.test_jobs_api import assert_problem

Sessions = async_sessionmaker[AsyncSession]


async def submit(client: httpx.AsyncClient, tenant: TenantKey, **extra: Any) -> dict[str, Any]:
    r = await client.post("/v1/jobs", json={**MC_JOB, **extra}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def after(job: str, condition: str = "afterok") -> dict[str, Any]:
    return {"depends_on": [{"job": job, "condition": condition}]}


async def finish(sessions: Sessions, job_id: str, state: JobState) -> None:
    """The job through RUNNING to ``state`` (CANCELLED: a user's cancel), as workers do."""
    jid = uuid.UUID(job_id)
    async with sessions() as s, s.begin():
        if state is JobState.CANCELLED:
            assert (await set_job_state(s, jid, Cancelled())).accepted
            return
        if (await s.get(Job, jid)).state == "PENDING":  # type: ignore[union-attr]
            await admit_pending(session_fetch(s), limit=1000)  # released: admitted first
        assert (await set_job_state(s, jid, Claimed("w1", 60))).accepted
    async with sessions() as s, s.begin():
        proposal = Reported(1, "w1", Report(state, retryable=False))
        assert (await set_job_state(s, jid, proposal)).accepted


async def row(sessions: Sessions, job_id: str | uuid.UUID) -> Job:
    async with sessions() as s:
        job = await s.get(Job, uuid.UUID(str(job_id)))
        assert job is not None
        return job


async def test_a_job_waits_for_its_dependency_then_is_admitted(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    a = await submit(client, tenant)
    b = await submit(client, tenant, **after(a["id"]))
    assert b["state"] == "PENDING"
    assert b["state_reason"] == "dependency"
    assert b["depends_on"] == [{"job": a["id"], "condition": "afterok"}]
    assert (await get(client, tenant, f"/v1/jobs/{b['id']}"))["state_reason"] == "dependency"
    assert (await row(sessions, b["id"])).deps_left == 1
    # admission passes it over while it waits
    async with sessions() as s, s.begin():
        admitted = await admit_pending(session_fetch(s), limit=1000)
    assert uuid.UUID(b["id"]) not in {x.job_id for x in admitted}
    await finish(sessions, a["id"], JobState.SUCCEEDED)
    released = await row(sessions, b["id"])
    assert (released.state, released.deps_left, released.state_reason) == ("PENDING", 0, None)
    async with sessions() as s, s.begin():
        admitted = await admit_pending(session_fetch(s), limit=1000)
    assert uuid.UUID(b["id"]) in {x.job_id for x in admitted}
    assert (await row(sessions, b["id"])).state == "QUEUED"


async def test_a_failure_cancels_the_chain_and_releases_afternotok(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    a = await submit(client, tenant)
    b = await submit(client, tenant, **after(a["id"]))
    c = await submit(client, tenant, **after(b["id"]))
    d = await submit(client, tenant, **after(c["id"], "afternotok"))
    e = await submit(client, tenant, **after(b["id"], "afterany"))
    await finish(sessions, a["id"], JobState.FAILED)
    for job in (b, c):
        body = await get(client, tenant, f"/v1/jobs/{job['id']}")
        assert (body["state"], body["state_reason"]) == ("CANCELLED", "dependency_never_satisfied")
        assert body["finished_at"] is not None
    for job in (d, e):  # C and B were cancelled: afternotok and afterany hold
        released = await row(sessions, job["id"])
        assert (released.state, released.deps_left) == ("PENDING", 0)
    async with sessions() as s:
        history = (
            await s.execute(select(JobEvent).where(JobEvent.job_id == uuid.UUID(c["id"])))
        ).scalars()
        assert [(h.from_state, h.to_state, h.reason) for h in history] == [
            ("PENDING", "CANCELLED", "dependency_never_satisfied")
        ]
        left = await s.scalar(
            select(func.count())
            .select_from(JobDep)
            .where(JobDep.job_id.in_([uuid.UUID(j["id"]) for j in (b, c, d, e)]))
        )
    assert left == 0  # every edge settled once


async def test_success_cancels_afternotok(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    a = await submit(client, tenant)
    b = await submit(client, tenant, **after(a["id"], "afternotok"))
    await finish(sessions, a["id"], JobState.SUCCEEDED)
    body = await get(client, tenant, f"/v1/jobs/{b['id']}")
    assert (body["state"], body["state_reason"]) == ("CANCELLED", "dependency_never_satisfied")


async def test_dependencies_final_at_submission_are_settled_at_once(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    ok = await submit(client, tenant)
    bad = await submit(client, tenant)
    await finish(sessions, ok["id"], JobState.SUCCEEDED)
    await finish(sessions, bad["id"], JobState.CANCELLED)
    ready = await submit(client, tenant, **after(ok["id"]))
    assert (ready["state"], ready["state_reason"]) == ("PENDING", None)
    assert (await row(sessions, ready["id"])).deps_left == 0
    never = await submit(client, tenant, **after(bad["id"]))
    assert (never["state"], never["state_reason"]) == ("CANCELLED", "dependency_never_satisfied")
    both = await submit(
        client,
        tenant,
        depends_on=[
            {"job": ok["id"], "condition": "afterany"},
            {"job": bad["id"], "condition": "afternotok"},
        ],
    )
    assert (await row(sessions, both["id"])).deps_left == 0


async def jobs_of(sessions: Sessions, tenant: TenantKey) -> int:
    async with sessions() as s:
        n = await s.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == uuid.UUID(tenant.tenant_id))
        )
    return int(n or 0)


async def test_refs_that_are_no_job_of_the_tenant_are_a_422_with_nothing_created(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    other = await make_tenant(client)
    theirs = await submit(client, other)
    mine = await submit(client, tenant)
    before = await jobs_of(sessions, tenant)
    for ref in (str(uuid.uuid4()), theirs["id"], "not-an-id", f"{mine['id']}:0"):
        r = await client.post(
            "/v1/jobs",
            json={
                **MC_JOB,
                "depends_on": [
                    {"job": mine["id"], "condition": "afterok"},
                    {"job": ref, "condition": "afterok"},
                ],
            },
            headers=tenant.headers,
        )
        body = assert_problem(r, 422)
        assert body["errors"] == [
            {"loc": ["body", "depends_on", 1, "job"], "msg": f"no such job: {ref!r}"}
        ]
    twice = [
        {"job": mine["id"], "condition": "afterok"},
        {"job": mine["id"], "condition": "afterany"},
    ]
    r = await client.post("/v1/jobs", json={**MC_JOB, "depends_on": twice}, headers=tenant.headers)
    assert_problem(r, 422)
    bad = {"job": mine["id"], "condition": "afterwards"}
    r = await client.post("/v1/jobs", json={**MC_JOB, "depends_on": [bad]}, headers=tenant.headers)
    assert_problem(r, 422)
    assert await jobs_of(sessions, tenant) == before


async def test_aftercorr_that_does_not_fit_is_a_422(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    job = await submit(client, tenant)
    four = await stored_array(sessions, tenant, 4)
    three = {"size": 3, "index_param": "seed"}
    before = await jobs_of(sessions, tenant)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({}, job["id"], "aftercorr joins an array to an array"),
        ({"array": three}, job["id"], "aftercorr joins an array to an array"),
        ({"array": three}, str(four), "aftercorr needs arrays of one size (3 and 4)"),
        ({"array": {"size": 4}}, f"{four}:1", "aftercorr joins an array to an array"),
        (
            {"array": {**three, "size": 4, "max_concurrent": 2}},
            str(four),
            "aftercorr cannot be combined with max_concurrent",
        ),
    ]
    for extra, ref, msg in cases:
        r = await client.post(
            "/v1/jobs", json={**MC_JOB, **extra, **after(ref, "aftercorr")}, headers=tenant.headers
        )
        body = assert_problem(r, 422)
        assert body["errors"] == [{"loc": ["body", "depends_on", 0, "condition"], "msg": msg}]
    assert await jobs_of(sessions, tenant) == before


async def test_afterok_on_an_array_waits_for_every_element(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    aid = await stored_array(sessions, tenant, 2, materialised=2)
    on_array = await submit(client, tenant, **after(str(aid)))
    on_element = await submit(client, tenant, **after(f"{aid}:0"))
    on_virtual = await submit(client, tenant, **after(f"{aid}:1", "afterany"))
    await move(sessions, aid, 0, JobState.RUNNING, JobState.SUCCEEDED)
    assert (await row(sessions, on_element["id"])).deps_left == 0
    assert (await row(sessions, on_array["id"])).deps_left == 1
    await move(sessions, aid, 1, JobState.RUNNING, JobState.SUCCEEDED)
    assert (await row(sessions, aid)).state == "SUCCEEDED"
    assert (await row(sessions, on_array["id"])).deps_left == 0
    assert (await row(sessions, on_virtual["id"])).deps_left == 0


async def test_an_element_cancelled_with_its_array_before_it_had_a_row(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    aid = await stored_array(sessions, tenant, 3)
    waiting = await submit(client, tenant, **after(f"{aid}:2"))
    r = await client.post(f"/v1/jobs/{aid}/cancel", headers=tenant.headers)
    assert r.status_code == 202, r.text
    body = await get(client, tenant, f"/v1/jobs/{waiting['id']}")
    assert (body["state"], body["state_reason"]) == ("CANCELLED", "dependency_never_satisfied")
    late = await submit(client, tenant, **after(f"{aid}:1", "afternotok"))
    assert (await row(sessions, late["id"])).deps_left == 0


async def test_an_array_waits_unmaterialised_and_is_cancelled_whole(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    first = await submit(client, tenant)
    arr = await submit(
        client, tenant, array={"size": 5, "index_param": "seed"}, **after(first["id"])
    )
    assert (arr["state"], arr["state_reason"]) == ("PENDING", "dependency")
    async with sessions() as s, s.begin():
        await materialise_elements(session_fetch(s), window=256, limit=1000)
    async with sessions() as s:
        n = await s.scalar(
            select(func.count()).select_from(Job).where(Job.array_id == uuid.UUID(arr["id"]))
        )
    assert n == 0  # not materialised while it waits
    await finish(sessions, first["id"], JobState.TIMED_OUT)
    body = await get(client, tenant, f"/v1/jobs/{arr['id']}")
    assert (body["state"], body["state_reason"]) == ("CANCELLED", "dependency_never_satisfied")
    assert body["array"]["counts"]["CANCELLED"] == 5


async def test_a_released_array_is_materialised(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    first = await submit(client, tenant)
    arr = await submit(
        client, tenant, array={"size": 3, "index_param": "seed"}, **after(first["id"])
    )
    await finish(sessions, first["id"], JobState.SUCCEEDED)
    async with sessions() as s, s.begin():
        await materialise_elements(session_fetch(s), window=256, limit=1000)
    async with sessions() as s:
        ids = (
            await s.execute(text("SELECT id FROM jobs WHERE array_id = :a"), {"a": arr["id"]})
        ).scalars()
        assert set(ids) == {element_id(uuid.UUID(arr["id"]), i) for i in range(3)}


async def test_aftercorr_releases_element_by_element(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    a = await stored_array(sessions, tenant, 3, materialised=3)
    await move(sessions, a, 0, JobState.RUNNING, JobState.SUCCEEDED)  # before B exists
    b = await submit(
        client, tenant, array={"size": 3, "index_param": "seed"}, **after(str(a), "aftercorr")
    )
    bid = uuid.UUID(b["id"])
    # A:0 had succeeded: B:0 is queued at once, so B runs
    assert (b["state"], b["state_reason"]) == ("RUNNING", "dependency")
    first = await row(sessions, element_id(bid, 0))
    assert (first.state, first.params) == ("QUEUED", {"samples": 1000, "seed": 0})
    c = await submit(client, tenant, **after(f"{bid}:1"))
    await move(sessions, a, 1, JobState.RUNNING, JobState.FAILED)
    second = await get(client, tenant, f"/v1/jobs/{bid}:1")
    assert (second["state"], second["state_reason"]) == ("CANCELLED", "dependency_never_satisfied")
    body = await get(client, tenant, f"/v1/jobs/{c['id']}")  # and what waited on it
    assert (body["state"], body["state_reason"]) == ("CANCELLED", "dependency_never_satisfied")
    async with sessions() as s, s.begin():  # the scheduler leaves B to A's elements
        await materialise_elements(session_fetch(s), window=256, limit=1000)
    async with sessions() as s:
        assert await s.get(Job, element_id(bid, 2)) is None
    r = await client.post(f"/v1/jobs/{a}/cancel", headers=tenant.headers)
    assert r.status_code == 202, r.text
    third = await get(client, tenant, f"/v1/jobs/{bid}:2")
    assert (third["state"], third["state_reason"]) == ("CANCELLED", "dependency_never_satisfied")
    body = await get(client, tenant, f"/v1/jobs/{bid}")
    assert body["array"]["counts"]["QUEUED"] == 1
    assert body["array"]["counts"]["CANCELLED"] == 2
    async with sessions() as s:
        left = await s.scalar(
            text("SELECT size - next_index FROM job_arrays WHERE job_id = :b"), {"b": bid}
        )
    assert left == 0  # nothing left for the scheduler to materialise
