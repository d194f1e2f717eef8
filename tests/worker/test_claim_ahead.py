"""A worker whose recent jobs were short claims up to one job per slot before a slot is
free (``services.worker.app``, ``CLAIM_AHEAD_MAX_RUN_S``): the claim's round trip overlaps
the run before. The job claimed ahead runs once a slot frees, never more at once than the
slots; a cancel while it waits ends it as a cancel of a running job does; a drain hands it
back unrun; after long jobs nothing is claimed ahead. On a database of its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.worker.app import CLAIM_AHEAD_MAX_RUN_S, WorkerRuntime
from services.worker.runner import KernelRunner, Outcome, Request, Status, Usage
from services.worker.settings import WorkerSettings
from shared.db.models import Job, JobAttempt, Worker
from shared.runtime import Resources
from shared.settings import CommonSettings, StorageSettings
from tests.factories import own_database
from tests.worker.test_group_commit import get, queued_jobs
from tests.worker.test_held_leases import dispatched

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture(scope="module")
async def db(settings: CommonSettings) -> AsyncIterator[Sessions]:
    async with own_database(settings, "claimahead") as (_, sessions):
        yield sessions


class Gated:
    """A kernel runner whose attempts wait for ``go``; it counts the runs going at once."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.now = 0
        self.most = 0
        self.ran: list[int] = []

    async def run(
        self, request: Request, *, timeout_s: float, usage: Usage, **_: object
    ) -> Outcome:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await self.go.wait()
        finally:
            self.now -= 1
        self.ran.append(request.params["samples"])
        return Outcome(Status.SUCCEEDED, usage, result={"samples": request.params["samples"]})


class Broker:
    """What the runtime asks of the broker here: its prefetch changes, recorded."""

    def __init__(self) -> None:
        self.prefetch: list[int] = []

    async def set_prefetch(self, _spec: object, prefetch: int) -> None:
        self.prefetch.append(prefetch)

    async def pause(self, _spec: object) -> None:
        return None

    async def resume(self, _spec: object) -> None:
        return None


def runtime(db: Sessions, tmp_path: Path, runner: Gated, *, slots: int) -> WorkerRuntime:
    storage = StorageSettings.model_validate({"local": {"root": str(tmp_path / "local")}})
    settings = WorkerSettings(
        name=f"w-{uuid.uuid4().hex[:8]}", storage=storage, concurrency=slots, lease_s=30
    )
    res = SimpleNamespace(
        engine=db.kw["bind"],
        sessions=db,
        relay=SimpleNamespace(wake=lambda: None),
        broker=Broker(),
    )
    return WorkerRuntime(cast(Resources, res), settings, cast(KernelRunner, runner))


async def reaches(db: Sessions, job_id: uuid.UUID, state: str) -> Job:
    """The job's row once it is in ``state`` (or after 5 s, whatever it is then)."""
    for _ in range(50):
        found = await get(db, job_id)
        if found.state == state:
            return found
        await asyncio.sleep(0.1)
    return await get(db, job_id)


async def settled(rt: WorkerRuntime) -> None:
    """Every run and record of the runtime done (records start runs' successors)."""
    while rt.jobs:
        await asyncio.wait_for(asyncio.gather(*rt.jobs), 10)


async def still_waiting(task: asyncio.Task[Any]) -> bool:
    await asyncio.sleep(0.3)
    return not task.done()


async def test_short_jobs_are_claimed_one_per_slot_ahead_and_run_as_slots_free(
    db: Sessions, tmp_path: Path
) -> None:
    runner = Gated()
    rt = runtime(db, tmp_path, runner, slots=1)
    rt.recent_run_s = CLAIM_AHEAD_MAX_RUN_S / 10  # its recent jobs were short
    first, second, third = await queued_jobs(db, 3)
    await asyncio.wait_for(rt.on_dispatch(dispatched(first)), 5)  # takes the slot, runs
    await asyncio.wait_for(rt.on_dispatch(dispatched(second)), 5)  # claimed ahead: acked
    assert rt.ahead == 1
    assert (await get(db, second)).state == "RUNNING"  # claimed, waiting for the slot
    assert second in rt.leased  # its lease is kept by the heartbeat meanwhile
    late = asyncio.create_task(rt.on_dispatch(dispatched(third)))
    assert await still_waiting(late)  # one ahead per slot: this one waits for a slot
    assert (await get(db, third)).state == "QUEUED"
    runner.go.set()
    await asyncio.wait_for(late, 5)
    await settled(rt)
    assert runner.most == 1  # never more runs at once than slots
    assert sorted(runner.ran) == [0, 1, 2]
    assert [(await get(db, j)).state for j in (first, second, third)] == ["SUCCEEDED"] * 3
    assert rt.ahead == 0
    assert not rt.slots.locked()
    assert not rt.leased
    # the short jobs' ends took the prefetch to twice the slots
    assert cast(Broker, rt.res.broker).prefetch == [2]


async def test_after_long_jobs_nothing_is_claimed_before_a_slot_frees(
    db: Sessions, tmp_path: Path
) -> None:
    runner = Gated()
    rt = runtime(db, tmp_path, runner, slots=1)
    rt.recent_run_s = CLAIM_AHEAD_MAX_RUN_S * 5  # long, though not long enough to pause
    first, second = await queued_jobs(db, 2)
    await asyncio.wait_for(rt.on_dispatch(dispatched(first)), 5)
    late = asyncio.create_task(rt.on_dispatch(dispatched(second)))
    assert await still_waiting(late)
    assert (await get(db, second)).state == "QUEUED"
    assert rt.ahead == 0
    runner.go.set()
    await asyncio.wait_for(late, 5)
    await settled(rt)
    assert [(await get(db, j)).state for j in (first, second)] == ["SUCCEEDED"] * 2


async def test_a_job_cancelled_while_it_waits_for_a_slot_ends_cancelled_unrun(
    db: Sessions, tmp_path: Path
) -> None:
    runner = Gated()
    rt = runtime(db, tmp_path, runner, slots=1)
    rt.recent_run_s = CLAIM_AHEAD_MAX_RUN_S / 10
    first, second = await queued_jobs(db, 2)
    await asyncio.wait_for(rt.on_dispatch(dispatched(first)), 5)
    await asyncio.wait_for(rt.on_dispatch(dispatched(second)), 5)
    assert rt.running.cancel(second)  # as ``job.cancelled`` on the control queue does
    assert (await reaches(db, second, "CANCELLED")).state == "CANCELLED"
    assert rt.ahead == 0
    async with db() as session:
        usage = (await session.execute(select(JobAttempt).where(JobAttempt.job_id == second))).all()
    assert len(usage) == 1  # the attempt is counted once, as a cancelled running job's
    runner.go.set()
    await settled(rt)
    assert runner.ran == [0]  # the cancelled job never ran
    assert (await get(db, first)).state == "SUCCEEDED"
    assert not rt.slots.locked()


async def test_a_drain_hands_a_job_claimed_ahead_back_unrun(db: Sessions, tmp_path: Path) -> None:
    runner = Gated()
    rt = runtime(db, tmp_path, runner, slots=1)
    rt.recent_run_s = CLAIM_AHEAD_MAX_RUN_S / 10
    first, second = await queued_jobs(db, 2)
    await asyncio.wait_for(rt.on_dispatch(dispatched(first)), 5)
    await asyncio.wait_for(rt.on_dispatch(dispatched(second)), 5)
    rt.stopping = True  # what ``shutdown`` does first, then it lets the jobs go:
    rt.releases[second].set()
    back = await reaches(db, second, "QUEUED")
    assert (back.state, back.worker, back.error) == ("QUEUED", None, None)
    assert rt.ahead == 0
    runner.go.set()
    await settled(rt)
    assert runner.ran == [0]


def ended(rt: WorkerRuntime, seconds: float) -> None:
    """What the end of a run does to the worker's prefetch (``_run``, ``_run_chunk``)."""
    rt._ran(seconds)
    rt._adapt_prefetch()


async def test_the_prefetch_doubles_while_jobs_are_claimed_ahead_and_comes_back_after(
    db: Sessions, tmp_path: Path
) -> None:
    runner = Gated()
    runner.go.set()
    rt = runtime(db, tmp_path, runner, slots=2)
    broker = cast(Broker, rt.res.broker)
    ended(rt, CLAIM_AHEAD_MAX_RUN_S / 10)  # a short job ended
    await asyncio.sleep(0.05)
    assert broker.prefetch == [4]
    assert rt.prefetch == 4
    ended(rt, CLAIM_AHEAD_MAX_RUN_S / 10)
    await asyncio.sleep(0.05)
    assert broker.prefetch == [4]  # unchanged: no call
    for _ in range(20):  # long ones: the average rises past the bound
        ended(rt, CLAIM_AHEAD_MAX_RUN_S * 10)
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert broker.prefetch[-1] == 2
    assert rt.prefetch == 2
    fixed = runtime(db, tmp_path, runner, slots=2)
    fixed.settings.prefetch = 3  # set by STRATUS_PREFETCH: never changed
    ended(fixed, CLAIM_AHEAD_MAX_RUN_S / 10)
    await asyncio.sleep(0.05)
    assert cast(Broker, fixed.res.broker).prefetch == []


async def test_the_heartbeat_tells_the_scheduler_how_long_recent_jobs_ran(
    db: Sessions, tmp_path: Path
) -> None:
    rt = runtime(db, tmp_path, Gated(), slots=2)
    await rt.heartbeat()
    async with db() as session:
        assert (await session.get_one(Worker, rt.settings.name)).run_s is None  # none yet
    rt.recent_run_s = 0.004
    await rt.heartbeat()
    async with db() as session:
        assert (await session.get_one(Worker, rt.settings.name)).run_s == 0.004
