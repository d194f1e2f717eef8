"""Pinned inputs (``"inputs": {"x": {"dataset", "checksum"}}``): a 422 at submit when the
dataset already holds other bytes, and, for a job that waits on a dependency (which may
still write it), a job FAILED at admission, before it runs, when the bytes differ then."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.jobs.states import JobState
from shared.jobs.store import admit_pending, session_fetch
from shared.storage.checksum import checksum_of
from shared.storage.stagein import request_stage_ins
from tests.gateway.array_rows import get
from tests.gateway.conftest import TenantKey
from tests.gateway.test_depends_on import after, finish, row, submit
from tests.gateway.test_jobs_api import assert_problem
from tests.gateway.test_workflows_provenance import npy, put

Sessions = async_sessionmaker[AsyncSession]


def saxpy(x: Any, y: Any, out: str) -> dict[str, Any]:
    return {
        "kernel": "saxpy",
        "params": {"a": 2.0},
        "inputs": {"x": x, "y": y},
        "outputs": {"y": out},
    }


async def admit(sessions: Sessions) -> set[uuid.UUID]:
    """The scheduler's admission: PENDING -> QUEUED, then the pins and stage-ins checked."""
    async with sessions() as s, s.begin():
        admitted = await admit_pending(session_fetch(s), limit=1000)
        for job in admitted:
            await request_stage_ins(session=s, admitted=job, tiers=["local"])
    return {job.job_id for job in admitted}


async def test_a_pinned_input_with_its_bytes_is_accepted_and_stored_apart(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    run = uuid.uuid4().hex[:8]
    x, y = f"pin/{run}/x.npy", f"pin/{run}/y.npy"
    x_sum = await put(client, tenant, x, npy([1.0, 2.0]))
    await put(client, tenant, y, npy([3.0, 4.0]))
    job = await submit(
        client, tenant, **saxpy({"dataset": x, "checksum": x_sum}, y, f"pin/{run}/o.npy")
    )
    assert job["inputs"] == {"x": x, "y": y}  # the rest of the system reads names
    stored = await row(sessions, job["id"])
    assert stored.inputs == {"x": x, "y": y}
    assert stored.pins == {"x": x_sum}
    assert uuid.UUID(job["id"]) in await admit(sessions)
    assert (await row(sessions, job["id"])).state == "QUEUED"


async def test_a_pin_on_other_bytes_is_a_422_at_submit(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    run = uuid.uuid4().hex[:8]
    x, y = f"pin/{run}/x.npy", f"pin/{run}/y.npy"
    x_sum = await put(client, tenant, x, npy([1.0, 2.0]))
    await put(client, tenant, y, npy([3.0, 4.0]))
    other = "xxh3-128:" + "0" * 32
    assert other != x_sum
    body = saxpy({"dataset": x, "checksum": other}, y, f"pin/{run}/o.npy")
    r = await client.post("/v1/jobs", json=body, headers=tenant.headers)
    assert_problem(r, 422)
    errors = r.json()["errors"]
    assert [e["loc"] for e in errors] == [["body", "inputs", "x", "checksum"]]
    assert x_sum in errors[0]["msg"]
    listed = await get(client, tenant, "/v1/jobs")
    assert all(j["inputs"].get("x") != x for j in listed["items"])  # nothing created


async def test_malformed_pins_are_a_422(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    run = uuid.uuid4().hex[:8]
    x, y = f"pin/{run}/x.npy", f"pin/{run}/y.npy"
    x_sum = await put(client, tenant, x, npy([1.0, 2.0]))
    await put(client, tenant, y, npy([3.0, 4.0]))
    out = f"pin/{run}/o.npy"
    bad = [
        saxpy({"dataset": x, "checksum": "md5:abc"}, y, out),  # not a checksum we know
        saxpy({"dataset": x}, y, out),  # no checksum
        saxpy({"dataset": x, "checksum": x_sum, "more": 1}, y, out),
        {**saxpy(x, y, out), "pins": {"x": x_sum}},  # no field of the contract
        {  # an array's inputs cannot be pinned (yet)
            **saxpy({"dataset": x, "checksum": x_sum}, y, f"pin/{run}/o{{index}}.npy"),
            "array": {"size": 2},
        },
    ]
    for body in bad:
        r = await client.post("/v1/jobs", json=body, headers=tenant.headers)
        assert_problem(r, 422)
    r = await client.post("/v1/jobs", json=bad[0], headers=tenant.headers)
    assert [e["loc"] for e in r.json()["errors"]] == [["body", "inputs", "x", "checksum"]]


async def test_a_dependent_job_fails_at_admission_when_its_pinned_bytes_differ(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    run = uuid.uuid4().hex[:8]
    x, y = f"pin/{run}/x.npy", f"pin/{run}/y.npy"
    old = await put(client, tenant, x, npy([1.0, 2.0]))
    await put(client, tenant, y, npy([3.0, 4.0]))
    new = "xxh3-128:" + "f" * 32  # what the dependency is expected to write
    first = await submit(client, tenant)
    # waiting on a dependency, neither pin is held to the bytes of now (it may rewrite them)
    on_new = await submit(
        client,
        tenant,
        **saxpy({"dataset": x, "checksum": new}, y, f"pin/{run}/a.npy"),
        **after(first["id"]),
    )
    on_old = await submit(
        client,
        tenant,
        **saxpy({"dataset": x, "checksum": old}, y, f"pin/{run}/b.npy"),
        **after(first["id"]),
    )
    await finish(sessions, first["id"], JobState.SUCCEEDED)  # it left x as it was
    admitted = await admit(sessions)
    assert {uuid.UUID(on_new["id"]), uuid.UUID(on_old["id"])} <= admitted
    failed = await row(sessions, on_new["id"])
    assert failed.state == "FAILED"
    assert failed.started_at is None  # it never ran
    assert failed.error is not None
    assert "pinned input 'x'" in failed.error
    assert old in failed.error
    assert new in failed.error
    assert (await row(sessions, on_old["id"])).state == "QUEUED"
    shown = await get(client, tenant, f"/v1/jobs/{on_new['id']}")
    assert shown["state"] == "FAILED"
    assert "pinned input 'x'" in shown["error"]


async def test_a_pin_on_what_a_dependency_will_write_is_held_when_the_job_is_admitted(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: Sessions
) -> None:
    run = uuid.uuid4().hex[:8]
    x, y, gone = f"pin/{run}/x.npy", f"pin/{run}/y.npy", f"pin/{run}/never.npy"
    await put(client, tenant, y, npy([3.0, 4.0]))
    data = npy([1.0, 2.0])
    first = await submit(client, tenant)
    right, wrong = checksum_of(data), "xxh3-128:" + "e" * 32
    jobs = {
        label: await submit(
            client,
            tenant,
            **saxpy({"dataset": name, "checksum": pin}, y, f"pin/{run}/{label}.npy"),
            **after(first["id"]),
        )
        for label, name, pin in (("right", x, right), ("wrong", x, wrong), ("gone", gone, right))
    }  # x does not exist yet: the dependency writes it
    await put(client, tenant, x, data)
    await finish(sessions, first["id"], JobState.SUCCEEDED)
    await admit(sessions)
    assert (await row(sessions, jobs["right"]["id"])).state == "QUEUED"
    wrong_row = await row(sessions, jobs["wrong"]["id"])
    assert wrong_row.state == "FAILED"
    assert wrong_row.error is not None
    assert right in wrong_row.error
    gone_row = await row(sessions, jobs["gone"]["id"])
    assert gone_row.state == "FAILED"
    assert gone_row.error is not None
    assert "does not exist" in gone_row.error
