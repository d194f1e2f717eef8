"""Preemption through checkpoints on a database of its own: a pool with no free slot and at
its maximum hands the slot of its lowest-priority checkpointing job to a higher-priority job
that waits (a ``job.preempted`` event for its worker), at most once per ``min_gap_s``, and
never for an equal or lower priority (two priorities cannot thrash); and what stopping each
worker loses, the autoscaler's scale-down order."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta

import orjson
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler.preempt import Preemptor, loss_per_worker, pool_at_max
from services.scheduler.settings import AutoscaleSettings, PoolSettings
from shared.db.models import Outbox, Tenant
from shared.events import utcnow
from tests.factories import new_job

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def s(s: Sessions) -> Sessions:
    """The scheduler tests' ``s``, and no pool's last preemption either."""
    async with s() as session, session.begin():
        await session.execute(text("TRUNCATE preemption_gaps"))
    return s


async def _jobs(s: Sessions, specs: Sequence[Mapping[str, object]]) -> list[uuid.UUID]:
    tid, ids = uuid.uuid4(), []
    async with s() as session, session.begin():
        session.add(Tenant(id=tid, name=f"p{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
    async with s() as session, session.begin():
        for spec in specs:
            ids.append(uuid.uuid4())
            session.add(new_job(tid, id=ids[-1], **spec))
    return ids


def running(
    priority: int, worker: str, *, kernel: str = "stencil2d", **more: object
) -> dict[str, object]:
    return {
        "state": "RUNNING",
        "kernel": kernel,
        "priority": priority,
        "worker": worker,
        "assigned_device": "cpu",
        "attempts": 1,
        "started_at": utcnow() - timedelta(seconds=float(str(more.pop("ago_s", 10)))),
        **more,
    }


def waiting(priority: int) -> dict[str, object]:
    return {"state": "QUEUED", "kernel": "stencil2d", "priority": priority}


async def _step(
    s: Sessions, p: Preemptor, *, full: bool = True, at_max: bool = True, slots: int = 0
) -> object:
    async with s() as session, session.begin():
        return await p.step(session, device="cpu", full=full, at_max=at_max, slots=slots)


async def _preempted(s: Sessions) -> list[dict[str, object]]:
    async with s() as session:
        rows = await session.execute(
            select(Outbox.body).where(Outbox.routing_key == "job.preempted")
        )
        return [orjson.loads(b) for (b,) in rows]


async def test_the_lowest_priority_checkpointing_job_makes_room(s: Sessions) -> None:
    low, _, _, _ = await _jobs(
        s,
        [
            running(2, "w-a"),
            running(4, "w-b"),
            running(1, "w-c", kernel="matmul"),  # cannot checkpoint: never preempted
            waiting(7),
        ],
    )
    done = await _step(s, Preemptor(min_gap_s=0.0))
    assert done is not None
    assert done.job_id == low  # type: ignore[attr-defined]
    assert done.for_priority == 7  # type: ignore[attr-defined]
    events = await _preempted(s)
    assert [(e["job_id"], e["worker"]) for e in events] == [(str(low), "w-a")]


async def test_no_preemption_with_room_or_growth_or_no_higher_priority(s: Sessions) -> None:
    await _jobs(s, [running(5, "w-a"), running(3, "w-b", checkpoint_interval_s=0), waiting(5)])
    p = Preemptor(min_gap_s=0.0)
    assert await _step(s, p) is None  # equal priority (5); the 3 does not checkpoint
    await _jobs(s, [waiting(9)])
    assert await _step(s, p, full=False) is None  # a slot is free
    assert await _step(s, p, at_max=False) is None  # the autoscaler can add a worker
    assert await _preempted(s) == []
    assert await _step(s, p) is not None  # full, at its maximum, a 9 waits for the 5


async def test_at_most_one_preemption_per_gap(s: Sessions) -> None:
    await _jobs(s, [running(1, "w-a"), running(2, "w-b"), waiting(8), waiting(8)])
    p = Preemptor(min_gap_s=3600.0)
    assert await _step(s, p) is not None
    assert await _step(s, p) is None  # within the gap: the second 8 waits
    assert len(await _preempted(s)) == 1


async def test_the_gap_holds_across_a_restart_and_between_schedulers(s: Sessions) -> None:
    await _jobs(s, [running(1, "w-a"), running(2, "w-b"), waiting(8), waiting(8)])
    assert await _step(s, Preemptor(min_gap_s=3600.0)) is not None
    # a scheduler started since (or a second one): nothing in its memory, the pool's last
    # preemption in the database
    restarted = Preemptor(min_gap_s=3600.0)
    assert await _step(s, restarted) is None
    assert await _step(s, Preemptor(min_gap_s=3600.0)) is None
    assert len(await _preempted(s)) == 1
    # the gap over (the cpu pool's one row set back), the second 8 gets the slot of the 2
    async with s() as session, session.begin():
        rows = await session.execute(text("SELECT pool FROM preemption_gaps"))
        assert [pool for (pool,) in rows] == ["cpu"]
        await session.execute(
            text("UPDATE preemption_gaps SET last_at = now() - interval '3601 seconds'")
        )
    assert await _step(s, restarted) is not None
    assert len(await _preempted(s)) == 2


async def test_two_alternating_priorities_do_not_thrash(s: Sessions) -> None:
    # the 7 took the slot of the 3; the 3 waits again: it may never take the slot back
    await _jobs(s, [running(7, "w-a"), waiting(3)])
    assert await _step(s, Preemptor(min_gap_s=0.0)) is None
    assert await _preempted(s) == []


async def test_stopping_a_worker_whose_jobs_checkpoint_loses_least(s: Sessions) -> None:
    await _jobs(
        s,
        [
            running(5, "w-ck", ago_s=600),  # long, but checkpoints: a drain saves it
            running(5, "w-ck", kernel="nbody", ago_s=600),
            running(5, "w-plain", kernel="matmul", ago_s=30),  # would start over
        ],
    )
    async with s() as session:
        loss = await loss_per_worker(session=session)
    assert loss["w-ck"] == 2
    assert loss["w-plain"] >= 30
    assert min(loss, key=loss.__getitem__) == "w-ck"


def test_a_fixed_pool_is_always_at_its_maximum() -> None:
    auto = AutoscaleSettings(enabled=True, cpu=PoolSettings(min_workers=1, max_workers=4))
    assert pool_at_max(AutoscaleSettings(enabled=False), "cpu", 1)
    assert not pool_at_max(auto, "cpu", 3)
    assert pool_at_max(auto, "cpu", 4)


async def _tenant_jobs(
    s: Sessions, weight: int, specs: Sequence[Mapping[str, object]]
) -> list[uuid.UUID]:
    tid, ids = uuid.uuid4(), []
    async with s() as session, session.begin():
        session.add(
            Tenant(id=tid, name=f"f{tid.hex[:8]}", weight=weight, quotas={}, suspended=False)
        )
    async with s() as session, session.begin():
        for spec in specs:
            ids.append(uuid.uuid4())
            session.add(new_job(tid, id=ids[-1], **spec))
    return ids


async def test_a_tenant_holding_every_slot_gives_one_to_a_starved_tenant(s: Sessions) -> None:
    hog = await _tenant_jobs(
        s, 1, [running(5, f"w-{i}", ago_s=100 - i) for i in range(4)]
    )  # w-3 started last
    await _tenant_jobs(s, 1, [waiting(5)])
    p = Preemptor(min_gap_s=0.0)
    done = await _step(s, p)
    assert done is not None
    assert done.reason == "fair share"  # type: ignore[attr-defined]
    assert done.job_id == hog[3]  # type: ignore[attr-defined]


async def test_fair_share_leaves_a_tenant_within_its_share_and_one_already_running(
    s: Sessions,
) -> None:
    # weights 3 and 1 on 4 slots: 3 is the heavier tenant's share; it runs 3, the other 1
    await _tenant_jobs(s, 3, [running(5, f"w-{i}") for i in range(3)])
    await _tenant_jobs(s, 1, [running(5, "w-3"), waiting(5)])
    assert await _step(s, Preemptor(min_gap_s=0.0)) is None
    # a third tenant waits with none running, but nobody runs a job beyond its share + 1
    await _tenant_jobs(s, 1, [waiting(5)])
    assert await _step(s, Preemptor(min_gap_s=0.0)) is None


async def test_fair_share_never_preempts_a_higher_priority(s: Sessions) -> None:
    await _tenant_jobs(s, 1, [running(8, f"w-{i}") for i in range(4)])
    await _tenant_jobs(s, 1, [waiting(2)])
    assert await _step(s, Preemptor(min_gap_s=0.0)) is None


async def test_a_dispatched_job_that_waits_preempts_and_is_sent_again(s: Sessions) -> None:
    from shared.db.models import Job

    _, _, high = await _jobs(
        s,
        [
            running(1, "w-a"),
            running(1, "w-b"),
            {**waiting(9), "dispatched_at": utcnow(), "assigned_device": "cpu"},
        ],
    )
    p = Preemptor(min_gap_s=0.0)
    assert await _step(s, p, slots=3) is None  # a slot is free: its message gets there
    done = await _step(s, p, slots=2)
    assert done is not None
    async with s() as session:
        job = await session.get(Job, high)
        assert job is not None
        assert job.dispatched_at is None  # the dispatcher sends it again
        assert job.assigned_device is None
