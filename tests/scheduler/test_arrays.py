"""The scheduler runs arrays: elements materialised late (their rows as ``element_of`` says),
bounded by the window and ``max_concurrent`` over passes, never for cancelled arrays or
suspended tenants; an array's own row is never admitted, dispatched or counted as demand,
and its pending elements are."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler import service
from services.scheduler.demand import pool_demand
from shared.db.models import Job, JobArray, Tenant, Worker
from shared.events import JobDispatched, utcnow
from shared.jobs.arrays import element_id, element_of
from shared.jobs.materialise import materialise_elements
from shared.jobs.proposals import Cancelled, Report
from shared.jobs.states import FINAL, JobState
from shared.jobs.store import (
    ADMIT_REASON,
    Finish,
    admit_pending,
    claim_queued,
    finish_attempts,
    session_fetch,
    set_job_state,
)
from shared.settings import QuotaDefaults
from tests.factories import new_array

Sessions = async_sessionmaker[AsyncSession]


async def _tenant(s: Sessions, **quotas: Any) -> uuid.UUID:
    tid = uuid.uuid4()
    async with s() as session, session.begin():
        session.add(Tenant(id=tid, name=f"t{tid.hex[:8]}", weight=1, quotas=quotas))
    return tid


async def _array(s: Sessions, tid: uuid.UUID, size: int, **fields: Any) -> uuid.UUID:
    job, array = new_array(tid, size, **fields)
    async with s() as session, session.begin():
        session.add(job)
        await session.flush()
        session.add(array)
    return job.id


async def _materialise(s: Sessions, window: int = 256, limit: int = 1000) -> int:
    async with s() as session, session.begin():
        return await materialise_elements(session_fetch(session), window=window, limit=limit)


async def _elements(s: Sessions, array_id: uuid.UUID) -> list[Job]:
    async with s() as session:
        rows = await session.scalars(
            select(Job).where(Job.array_id == array_id).order_by(Job.array_index)
        )
        return list(rows)


async def _row(s: Sessions, array_id: uuid.UUID) -> tuple[Job, JobArray]:
    async with s() as session:
        return await session.get_one(Job, array_id), await session.get_one(JobArray, array_id)


async def _live(s: Sessions, array_id: uuid.UUID) -> int:
    return sum(e.state not in FINAL for e in await _elements(s, array_id))


async def test_elements_are_the_parent_filled_in_as_element_of_says(s: Sessions) -> None:
    tid = await _tenant(s)
    templates: dict[str, Any] = {
        "params": {"samples": 100, "x": 1},
        "outputs": {"estimate": "pi-{index}.npy"},
    }
    overrides = [{"x": 2}, {}, {"samples": 7, "seed": 99}]
    aid = await _array(
        s,
        tid,
        5,
        index_param="seed",
        overrides=overrides,
        labels={"sweep": "a"},
        priority=3,
        output_tier="archive",
        **templates,
    )
    assert await _materialise(s) == 5
    parent, array = await _row(s, aid)
    elements = await _elements(s, aid)
    for i, e in enumerate(elements):
        want = element_of(
            params=templates["params"],
            inputs={},
            outputs=templates["outputs"],
            index=i,
            index_param="seed",
            overrides=overrides,
        )
        assert (e.id, e.array_id, e.array_index, e.is_array) == (element_id(aid, i), aid, i, False)
        assert (e.params, e.inputs, e.outputs) == (want.params, want.inputs, want.outputs)
        assert (e.tenant_id, e.kernel, e.device, e.labels, e.output_tier) == (
            tid,
            "montecarlo_pi",
            "cpu",
            {"sweep": "a"},
            "archive",
        )
        assert (e.priority, e.timeout_s, e.max_retries, e.attempts) == (3, 60, 2, 0)
        assert (e.state, e.state_reason, e.created_at) == (
            "QUEUED",
            ADMIT_REASON,
            parent.created_at,
        )
        assert e.queued_at is not None
        assert e.idempotency_key is None
    assert elements[2].params == {"samples": 7, "x": 1, "seed": 2}  # the index wins
    assert (array.next_index, array.n_pending, array.n_queued) == (5, 0, 5)
    assert (parent.state, parent.is_array) == ("RUNNING", True)
    assert await _materialise(s) == 0  # nothing left


async def test_elements_that_read_datasets_wait_for_admission(s: Sessions) -> None:
    tid = await _tenant(s)
    aid = await _array(s, tid, 3, inputs={"grid": "grid-{index}", "mask": "shared"})
    assert await _materialise(s) == 3
    elements = await _elements(s, aid)
    assert [e.inputs for e in elements] == [
        {"grid": f"grid-{i}", "mask": "shared"} for i in range(3)
    ]
    assert {(e.state, e.queued_at) for e in elements} == {("PENDING", None)}
    async with s() as session, session.begin():
        admitted = await admit_pending(session_fetch(session), limit=100)
    assert sorted(a.job_id for a in admitted) == [e.id for e in elements]  # never the array
    parent, array = await _row(s, aid)
    assert (parent.state, array.n_pending, array.n_queued) == ("RUNNING", 0, 3)


async def test_an_array_row_is_never_admitted(s: Sessions) -> None:
    tid = await _tenant(s)
    aid = await _array(s, tid, 4)
    async with s() as session, session.begin():
        assert await admit_pending(session_fetch(session), limit=100) == []
    parent, _ = await _row(s, aid)
    assert parent.state == "PENDING"


async def _finish(s: Sessions, ids: list[uuid.UUID], state: JobState = JobState.SUCCEEDED) -> None:
    """Claim the jobs ``ids`` and record ``state`` for each, as a worker's batches do."""
    async with s() as session, session.begin():
        claims = await claim_queued(session_fetch(session), ids, worker="w", lease_s=30)
        left = await finish_attempts(
            session_fetch(session),
            [Finish(c.job_id, c.tenant_id, c.attempt, Report(state)) for c in claims.values()],
            worker="w",
        )
    assert len(claims) == len(ids)
    assert left == []


@pytest.mark.parametrize(("max_concurrent", "window"), [(3, 10), (None, 4), (6, 4)])
async def test_live_elements_stay_within_max_concurrent_and_the_window(
    s: Sessions, max_concurrent: int | None, window: int
) -> None:
    tid = await _tenant(s)
    aid = await _array(s, tid, 20, max_concurrent=max_concurrent)
    bound = min(max_concurrent or window, window)
    done: set[int] = set()
    for step in range(40):
        await _materialise(s, window=window)
        elements = await _elements(s, aid)
        live = [e for e in elements if e.state not in FINAL]
        assert len(live) == min(bound, 20 - len(done)), step
        _, array = await _row(s, aid)
        assert array.next_index == len(elements)
        if not live:
            break
        # one or two finish at each step, the running ones first
        finishing = live[: 1 + step % 2]
        await _finish(s, [e.id for e in finishing])
        done |= {e.array_index or 0 for e in finishing}
    parent, array = await _row(s, aid)
    assert (parent.state, array.n_succeeded, len(done)) == ("SUCCEEDED", 20, 20)


async def test_a_pass_materialises_at_most_its_limit_each_tenant_first(s: Sessions) -> None:
    a, b = await _tenant(s), await _tenant(s)
    a1, a2 = await _array(s, a, 10), await _array(s, a, 10)
    b1 = await _array(s, b, 10)
    assert await _materialise(s, window=4, limit=9) == 9
    got = {x: len(await _elements(s, x)) for x in (a1, a2, b1)}
    assert got[a1] == 4
    assert got[b1] == 4
    assert got[a2] == 1
    assert await _materialise(s, window=4, limit=9) == 3  # a2 up to its window
    assert len(await _elements(s, a2)) == 4


async def test_cancelled_arrays_and_suspended_tenants_get_no_elements(s: Sessions) -> None:
    tid, held = await _tenant(s), await _tenant(s)
    cancelled = await _array(s, tid, 5)
    suspended = await _array(s, held, 5)
    async with s() as session, session.begin():
        await session.execute(
            update(JobArray).where(JobArray.job_id == cancelled).values(cancelled=True)
        )
        await session.execute(update(Tenant).where(Tenant.id == held).values(suspended=True))
    assert await _materialise(s) == 0
    assert await _elements(s, cancelled) == []
    assert await _elements(s, suspended) == []
    async with s() as session, session.begin():
        await session.execute(update(Tenant).where(Tenant.id == held).values(suspended=False))
    assert await _materialise(s) == 5  # resumed: its array goes on


async def test_an_element_cancelled_alone_keeps_its_row(s: Sessions) -> None:
    tid = await _tenant(s)
    aid = await _array(s, tid, 5)
    cancelled = element_of(
        params={"samples": 1}, inputs={}, outputs={}, index=1, index_param=None, overrides=None
    )
    async with s() as session, session.begin():  # as a cancel of the virtual element does
        session.add(
            Job(
                id=element_id(aid, 1),
                tenant_id=tid,
                kernel="montecarlo_pi",
                device="cpu",
                params=cancelled.params,
                inputs={},
                outputs={},
                labels={},
                priority=0,
                timeout_s=60,
                max_retries=2,
                state="CANCELLED",
                attempts=0,
                finished_at=utcnow(),
                array_id=aid,
                array_index=1,
            )
        )
    _, array = await _row(s, aid)
    assert (array.n_pending, array.n_cancelled) == (4, 1)
    assert await _materialise(s, window=3) == 2  # indices 0 and 2; 1 is there already
    assert [(e.array_index, e.state) for e in await _elements(s, aid)] == [
        (0, "QUEUED"),
        (1, "CANCELLED"),
        (2, "QUEUED"),
    ]
    assert await _materialise(s, window=3) == 1  # the cancelled one is not live: index 3
    assert await _live(s, aid) == 3
    _, array = await _row(s, aid)
    assert (array.next_index, array.n_pending, array.n_queued, array.n_cancelled) == (4, 1, 3, 1)


async def test_elements_dispatch_in_index_order_and_the_array_row_never(s: Sessions) -> None:
    tid = await _tenant(s)
    aid = await _array(s, tid, 6)
    async with s() as session, session.begin():
        session.add(
            Worker(id="w1", device="cpu", concurrency=4, stopping=False, heartbeat_at=utcnow())
        )
    await _materialise(s)
    async with service.open_pass(s.kw["bind"], s) as db:
        fair = service.FairShareSettings(reserved_slots=0)
        events = await service.dispatch(db, worker_ttl_s=15, slack=0.0, batch=500, fair=fair)
    assert [e.job_id for e in events if isinstance(e, JobDispatched)] == [
        element_id(aid, i) for i in range(4)
    ]


async def test_demand_counts_pending_elements_not_the_array_row(s: Sessions) -> None:
    tid = await _tenant(s)
    await _array(s, tid, 1000)
    quotas = QuotaDefaults(max_running_jobs=64)
    async with s() as session:
        demand = await pool_demand(session=session, any_pool="cpu", quota_defaults=quotas)
    # no worker is up: the elements ask for workers, up to the tenant's headroom
    assert (demand["cpu"].queued, demand["cpu"].running, demand["cpu"].blocked) == (64, 0, 936)
    await _materialise(s, window=10)
    async with s() as session:
        after = await pool_demand(session=session, any_pool="cpu", quota_defaults=quotas)
    assert after["cpu"] == demand["cpu"]  # rows or not, 1,000 elements wait


async def test_demand_of_an_array_is_bounded_by_max_concurrent(s: Sessions) -> None:
    tid = await _tenant(s)
    aid = await _array(s, tid, 1000, max_concurrent=2, device="any")
    async with s() as session:
        demand = await pool_demand(session=session, any_pool="cpu")
    assert (demand["cpu"].queued, demand["cpu"].blocked) == (2, 998)
    await _materialise(s)
    await _finish(s, [element_id(aid, 0)])
    async with s() as session:
        after = await pool_demand(session=session, any_pool="cpu")
    assert (after["cpu"].queued, after["cpu"].blocked) == (2, 997)


async def test_a_suspended_tenants_elements_are_blocked(s: Sessions) -> None:
    tid = await _tenant(s)
    await _array(s, tid, 10)
    async with s() as session, session.begin():
        await session.execute(update(Tenant).where(Tenant.id == tid).values(suspended=True))
    async with s() as session:
        demand = await pool_demand(session=session, any_pool="cpu")
    assert (demand["cpu"].queued, demand["cpu"].blocked) == (0, 10)


async def test_a_cancelled_element_leaves_the_window(s: Sessions) -> None:
    tid = await _tenant(s)
    aid = await _array(s, tid, 5, max_concurrent=2)
    await _materialise(s)
    async with s() as session, session.begin():
        await set_job_state(session, element_id(aid, 0), Cancelled())
    assert await _materialise(s) == 1
    assert [e.state for e in await _elements(s, aid)] == ["CANCELLED", "QUEUED", "QUEUED"]


def _keda_fallbacks() -> dict[str, str]:
    """The queries of KEDA's postgresql triggers (deploy/kubernetes/keda.yaml), per pool."""
    path = Path(__file__).parents[2] / "deploy" / "kubernetes" / "keda.yaml"
    queries = {}
    for doc in yaml.safe_load_all(path.read_text()):
        for trigger in doc["spec"].get("triggers", []) if doc["kind"] == "ScaledObject" else []:
            if trigger["type"] == "postgresql":
                sql = trigger["metadata"]["query"]
                queries["cuda" if "'cuda'" in sql else "cpu"] = sql
    return queries


async def test_kedas_fallback_counts_elements_not_the_array_row(s: Sessions) -> None:
    """Without the scheduler's demand, KEDA counts every element that needs the pool, with a
    row or not, and never an array's own row."""
    tid = await _tenant(s)
    aid = await _array(s, tid, 10, device="any")
    await _array(s, tid, 3, device="cuda")
    cancelled = await _array(s, tid, 50)
    async with s() as session, session.begin():
        await session.execute(
            update(JobArray).where(JobArray.job_id == cancelled).values(cancelled=True)
        )
    queries = _keda_fallbacks()

    async def values() -> dict[str, Any]:
        async with s() as session:
            return {pool: await session.scalar(text(q)) for pool, q in queries.items()}

    assert await values() == {"cpu": 10, "cuda": 3}
    await _materialise(s, window=4)
    await _finish(s, [element_id(aid, 0)])
    assert await values() == {"cpu": 9, "cuda": 3}  # 3 rows, 6 without one


async def test_concurrent_passes_never_exceed_the_bound(s: Sessions) -> None:
    """Schedulers materialising at once (each its own transaction) leave the array at its
    bound, not a multiple of it."""
    tid = await _tenant(s)
    aid = await _array(s, tid, 100, max_concurrent=3)
    for _ in range(5):
        await asyncio.gather(*(_materialise(s) for _ in range(6)))
        elements = await _elements(s, aid)
        assert sum(e.state not in FINAL for e in elements) == 3
        _, array = await _row(s, aid)
        assert array.next_index == len(elements)
        await _finish(s, [elements[-1].id])
