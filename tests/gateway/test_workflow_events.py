"""``workflow.state`` events on ``GET /v1/events`` (real gateway processes, real database): a
workflow's state changes, as its steps change theirs, are events in the feed's one id
sequence; ``?job=<workflow id>`` narrows the stream to them; another tenant's workflow is a
404."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import WorkflowEvent
from shared.jobs.states import JobState
from tests.gateway.array_rows import MC_JOB
from tests.gateway.test_depends_on import finish
from tests.gateway.test_events import (
    Gateway,
    Tenant,
    last_id,
    make_tenant,
    nothing_more,
    stream,
)
from tests.gateway.test_events import gateways as gateways  # the fixture

pytestmark = pytest.mark.timeout(300)

Sessions = async_sessionmaker[AsyncSession]


async def create(url: str, tenant: Tenant) -> dict[str, Any]:
    body = {
        "name": "two-steps",
        "steps": {
            "first": MC_JOB,
            "second": {**MC_JOB, "depends_on": [{"step": "first", "condition": "afterok"}]},
        },
    }
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        r = await c.post("/v1/workflows", json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def test_a_workflow_s_state_changes_are_events_and_job_narrows_to_them(
    gateways: tuple[Gateway, Gateway], sessions: Sessions
) -> None:
    a, b = gateways
    tenant = await make_tenant(a.url)
    start = await last_id(sessions)
    w = await create(a.url, tenant)
    assert w["state"] == "RUNNING"  # "first" reads no dataset: queued at once
    other = await create(a.url, tenant)
    await finish(sessions, w["steps"]["first"], JobState.SUCCEEDED)
    await finish(sessions, w["steps"]["second"], JobState.SUCCEEDED)
    params = {"after": str(start), "job": w["id"]}
    async with stream(b.url, tenant, params=params) as (seen, read):
        await read(2)
        await nothing_more(read, within=2.0)  # not its steps' events, not the other's
    assert [e["event"] for e in seen.events] == ["workflow.state"] * 2
    assert [e["data"]["state"] for e in seen.events] == ["RUNNING", "SUCCEEDED"]
    for e in seen.events:
        assert set(e["data"]) == {"workflow_id", "state", "at"}
        assert e["data"]["workflow_id"] == w["id"]
    assert seen.ids == sorted(seen.ids)
    # the whole stream has them too, among the steps' own, in one order
    async with sessions() as s:  # every event of the tenant's since: the steps' and these
        made = await s.scalar(
            text(
                "SELECT (SELECT count(*) FROM job_events WHERE tenant_id = :t AND id > :s)"
                " + (SELECT count(*) FROM workflow_events WHERE tenant_id = :t AND id > :s)"
            ),
            {"t": tenant.id, "s": start},
        )
    async with stream(a.url, tenant, params={"after": str(start)}) as (whole, read):
        await read(int(made or 0))
        await nothing_more(read, within=2.0)
    assert whole.ids == sorted(whole.ids)
    assert set(seen.ids) <= set(whole.ids)
    flows = [e["data"]["workflow_id"] for e in whole.events if e["event"] == "workflow.state"]
    assert sorted(flows) == sorted([w["id"], w["id"], other["id"]])
    finished = next(e for e in whole.events if e["id"] == str(seen.ids[1]))
    second = [
        int(e["id"])
        for e in whole.events
        if e["event"] == "job.state" and e["data"]["job_id"] == w["steps"]["second"]
    ]
    assert int(finished["id"]) > max(second)  # after the step that made it SUCCEEDED


async def test_a_cancelled_workflow_ends_cancelled_once(
    gateways: tuple[Gateway, Gateway], sessions: Sessions
) -> None:
    a, _ = gateways
    tenant = await make_tenant(a.url)
    w = await create(a.url, tenant)
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as c:
        r = await c.post(f"/v1/workflows/{w['id']}/cancel", headers=tenant.headers)
        assert r.status_code in (200, 202), r.text
        got = await c.get(f"/v1/workflows/{w['id']}", headers=tenant.headers)
    assert got.json()["state"] == "CANCELLED"
    async with sessions() as s:
        states = list(
            await s.scalars(
                select(WorkflowEvent.state)
                .where(WorkflowEvent.workflow_id == uuid.UUID(w["id"]))
                .order_by(WorkflowEvent.id)
            )
        )
    assert states == ["RUNNING", "CANCELLED"]


async def test_another_tenant_s_workflow_is_a_404(gateways: tuple[Gateway, Gateway]) -> None:
    a, _ = gateways
    owner, stranger = await make_tenant(a.url), await make_tenant(a.url)
    w = await create(a.url, owner)
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as c:
        r = await c.get("/v1/events", params={"job": w["id"]}, headers=stranger.headers)
    assert r.status_code == 404
