"""Cancel of an array and of its elements, on the real database: running elements told to
stop, virtual ones cancelled at once, an element cancelled before it has a row, each counted
once, and elements materialised while a cancel waits for its array."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import orjson
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.gateway.jobs import cancel
from shared.db.models import Job, JobArray, JobEvent, Outbox
from shared.errors import Conflict
from shared.jobs.arrays import element_id
from shared.jobs.states import JobState
from tests.gateway.array_rows import counts, get, materialise, move, stored_array
from tests.gateway.conftest import TenantKey
from tests.gateway.test_jobs_api import assert_problem


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
    r = await client.post(f"/v1/jobs/{aid}:6/cancel", headers=tenant.headers)
    assert r.status_code == 202, r.text
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
    # it never ran: it ends, but it never started
    assert r.json()["started_at"] is None
    assert r.json()["finished_at"] is not None
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


async def until_waiting_for_lock(sessions: async_sessionmaker[AsyncSession], sql: str) -> None:
    """Until a statement like ``sql`` waits for a lock in this database."""
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE :sql"
    )
    for _ in range(1000):
        async with sessions() as s:
            if await s.scalar(waiting, {"sql": sql}):
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"nothing waits for a lock in {sql!r}")


async def test_elements_materialised_while_a_cancel_waits_are_cancelled(
    client: httpx.AsyncClient, tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    aid = await stored_array(sessions, tenant, 6, materialised=2)
    # The scheduler materialising elements 2 and 3, under the array's lock, as the cancel
    # comes: the cancel has locked elements 0 and 1 and waits for the array.
    async with sessions() as scheduler, scheduler.begin():
        locked = select(JobArray).where(JobArray.job_id == aid).with_for_update()
        await scheduler.execute(locked)
        await materialise(scheduler, aid, 2, JobState.QUEUED)
        cancelling = asyncio.create_task(
            client.post(f"/v1/jobs/{aid}/cancel", headers=tenant.headers)
        )
        await until_waiting_for_lock(sessions, "%FROM job_arrays%FOR UPDATE%")
    r = await cancelling
    assert r.status_code == 202, r.text
    assert r.json()["array"]["counts"] == counts(cancelled=6)
    items = (await get(client, tenant, f"/v1/jobs/{aid}/elements"))["items"]
    assert [e["state"] for e in items] == ["CANCELLED"] * 6
    async with sessions() as s:
        history = (
            await s.execute(
                select(JobEvent.from_state, JobEvent.to_state).where(
                    JobEvent.job_id == element_id(aid, 3)
                )
            )
        ).all()
    assert [tuple(h) for h in history] == [("QUEUED", "CANCELLED")]


async def test_an_element_another_transaction_holds_is_a_409_to_retry(
    tenant: TenantKey, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """What the cancel answers when an element it must lock after the array's lock is held
    (by a claim that waits for the array): no wait, a 409 with ``Retry-After``."""
    aid = await stored_array(sessions, tenant, 2, materialised=1)
    held = select(Job.id).where(Job.id == element_id(aid, 0))
    async with sessions() as claim, claim.begin():
        await claim.execute(held.with_for_update())
        async with sessions() as s, s.begin():
            with pytest.raises(Conflict) as refused:
                await cancel._lock_nowait(s, held)
    assert refused.value.retry_after is not None
    assert refused.value.detail == cancel.BUSY
