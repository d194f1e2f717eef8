"""A running job's progress: the iterating kernels run in blocks between reports and give
the same result bit for bit; the pool process sends the reports as frames (at most one a
second); the worker writes the latest value of each running job every 2 s in one statement
(``jobs.progress``, a ``job_events`` row of kind ``progress``, a ``job_log`` line), so the
value rises while a long job runs and is 1.0 once it SUCCEEDED; a job that ends before a
flush writes nothing there."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.worker import progress, service
from services.worker.app import WorkerRuntime
from services.worker.kernels import montecarlo, nbody, stencil2d
from services.worker.runner import KernelRunner, PoolConfig, Request, Status
from services.worker.settings import WorkerSettings
from shared.db.models import Job, JobEvent, JobLogLine, Tenant
from shared.jobs.store import Claim
from shared.runtime import Resources
from shared.settings import CommonSettings, StorageSettings
from tests.factories import admit_jobs, new_job, own_database
from tests.worker.conftest import CACHE

Sessions = async_sessionmaker[AsyncSession]
# samples of a job that runs for several flushes on one thread (about 10 s on a quiet core)
LONG_SAMPLES = 1_500_000_000


@pytest.fixture(scope="module")
async def db(settings: CommonSettings) -> AsyncIterator[Sessions]:
    async with own_database(settings, "progress") as (_, sessions):
        yield sessions


@pytest_asyncio.fixture(scope="module")
async def pool() -> AsyncIterator[KernelRunner]:
    runner = KernelRunner(PoolConfig(processes=1, cache_dir=CACHE))
    await runner.start()
    yield runner
    await runner.close()


def runtime(db: Sessions, pool: KernelRunner, root: Path) -> WorkerRuntime:
    storage = StorageSettings.model_validate({"local": {"root": str(root)}, "fsync": False})
    settings = WorkerSettings(name="w1", storage=storage, concurrency=1, lease_s=60)
    res = SimpleNamespace(
        engine=db.kw["bind"], sessions=db, relay=SimpleNamespace(wake=lambda: None)
    )
    return WorkerRuntime(cast(Resources, res), settings, pool)


async def claimed(db: Sessions, **job: Any) -> Claim:
    tid, jid = uuid.uuid4(), uuid.uuid4()
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"p{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
        await session.flush()
        session.add(new_job(tid, id=jid, timeout_s=600, **job))
    async with db() as session, session.begin():
        assert await admit_jobs(session=session, job_ids=[jid]) == 1
        claim = await service.claim(session=session, job_id=jid, worker="w1", lease_s=60)
    assert isinstance(claim, Claim)
    return claim


async def row(db: Sessions, job_id: uuid.UUID) -> Job:
    async with db() as session:
        found = await session.get(Job, job_id)
        assert found is not None
        return found


async def written(db: Sessions, job_id: uuid.UUID) -> tuple[list[float], list[str]]:
    """The job's progress events' values and its log lines."""
    async with db() as session:
        events = await session.execute(
            select(JobEvent.progress)
            .where(JobEvent.job_id == job_id, JobEvent.kind == "progress")
            .order_by(JobEvent.id)
        )
        lines = await session.execute(
            select(JobLogLine.line).where(JobLogLine.job_id == job_id).order_by(JobLogLine.id)
        )
        return [float(v) for v in events.scalars() if v is not None], list(lines.scalars())


async def test_progress_rises_while_a_long_job_runs_and_is_whole_at_the_end(
    db: Sessions, pool: KernelRunner, tmp_path: Path
) -> None:
    rt = runtime(db, pool, tmp_path)
    claim = await claimed(db, params={"samples": LONG_SAMPLES, "seed": 7})
    await rt.slots.acquire()  # as ``on_dispatch`` does; ``_run`` gives it back
    run = asyncio.create_task(rt._run(claim))
    seen: list[float] = []
    # the worker's loop flushes every FLUSH_S; this one looks more often, so that a fast host
    # (the pool sends a frame a second) still shows two values while the job runs
    while not run.done():
        await asyncio.wait({run}, timeout=progress.FLUSH_S / 4)
        await rt.flush_progress()
        value = (await row(db, claim.job_id)).progress
        if value is not None and not run.done():
            seen.append(value)
    await run
    job = await row(db, claim.job_id)
    assert job.state == "SUCCEEDED", job.error
    assert job.progress == 1.0
    inside = [v for v in seen if 0.0 < v < 1.0]
    assert len(set(inside)) >= 2, seen  # it rose while the job ran
    assert seen == sorted(seen)
    values, lines = await written(db, claim.job_id)
    assert values == sorted(values)
    assert len(values) >= 2
    for v in inside:  # each value the row held came with its event (a REAL: float32)
        assert any(abs(v - w) < 1e-6 for w in values), (v, values)
    assert len([line for line in lines if line.startswith("progress ")]) == len(values)


async def test_a_job_that_ends_before_a_flush_writes_nothing_more(
    db: Sessions, pool: KernelRunner, tmp_path: Path
) -> None:
    rt = runtime(db, pool, tmp_path)
    claim = await claimed(db, params={"samples": 1000, "seed": 1})
    await rt.slots.acquire()
    await rt._run(claim)
    await rt.flush_progress()
    assert (await row(db, claim.job_id)).state == "SUCCEEDED"
    assert await written(db, claim.job_id) == ([], [])


async def test_the_pool_sends_progress_frames_at_most_once_a_second(pool: KernelRunner) -> None:
    reports: list[tuple[float, float]] = []
    loop = asyncio.get_running_loop()
    request = Request("montecarlo_pi", "cpu", {"samples": LONG_SAMPLES // 3, "seed": 3})
    outcome = await pool.run(
        request, timeout_s=600, on_progress=lambda v: reports.append((loop.time(), v))
    )
    assert outcome.status is Status.SUCCEEDED, outcome
    assert reports, "a job of a few seconds reports its progress"
    values = [v for _, v in reports]
    assert values == sorted(values)
    assert all(0.0 < v <= 1.0 for v in values)
    # frames are a second apart when sent (the event loop may read two queued ones together)
    span = reports[-1][0] - reports[0][0]
    assert span >= (len(reports) - 1) * progress.FRAME_GAP_S * 0.5


def test_blocks_add_up_and_report_without_changing_a_result(tmp_path: Path) -> None:
    assert list(progress.blocks(10)) == [10]  # nobody listens: one block
    seen: list[float] = []
    with progress.sink(seen.append):
        sizes = list(progress.blocks(1000, first=3))
    assert sum(sizes) == 1000
    assert sizes[0] == 3
    assert seen == sorted(seen)
    assert seen[-1] == 1.0

    rng = np.random.default_rng(5)
    np.save(tmp_path / "grid.npy", rng.random((64, 64)))
    np.save(tmp_path / "bodies.npy", rng.random((40, 7)))

    def run_all(tag: str) -> tuple[Any, ...]:
        stencil2d.run_cpu(
            {"iterations": 37},
            {"grid": str(tmp_path / "grid.npy")},
            {"grid": str(tmp_path / f"g{tag}.npy")},
        )
        energies = nbody.run_cpu(
            {"steps": 23, "dt": 0.01, "softening": 0.05},
            {"bodies": str(tmp_path / "bodies.npy")},
            {"bodies": str(tmp_path / f"b{tag}.npy")},
        )
        pi = montecarlo.estimate(3_000_000, 9)
        grid = np.load(tmp_path / f"g{tag}.npy")
        bodies = np.load(tmp_path / f"b{tag}.npy")
        return grid, bodies, energies, pi

    whole = run_all("whole")
    reported: list[float] = []
    # tiny blocks: every step and stream block its own call
    with progress.sink(reported.append):
        blocked = run_all("blocked")
    assert reported
    np.testing.assert_array_equal(whole[0], blocked[0])
    np.testing.assert_array_equal(whole[1], blocked[1])
    assert whole[2:] == blocked[2:]


def test_the_tracker_writes_a_job_once_it_has_run_for_a_flush_interval() -> None:
    job, tenant = uuid.uuid4(), uuid.uuid4()
    tracker = progress.Tracker(min_age_s=3600)  # nothing is that old
    tracker.start(job, tenant, 1)
    tracker.progress(job, 0.25)
    tracker.line(job, "staging out 1 output(s) to tier 'archive'")
    assert not tracker.take()
    tracker.end(job)  # it ended before it was written: nothing of it ever is
    assert not tracker.take()

    tracker = progress.Tracker(min_age_s=0)
    tracker.start(job, tenant, 2)
    tracker.progress(job, 0.25)
    tracker.line(job, "staging out 1 output(s) to tier 'archive'")
    batch = tracker.take()
    assert (batch.job_ids, batch.attempts, batch.values) == ([job], [2], [0.25])
    assert batch.lines == ["staging out 1 output(s) to tier 'archive'", "progress 25%"]
    assert not tracker.take()  # the same value is not written twice
    tracker.line(job, "staged out in 0.1 s")
    tracker.end(job)  # its lines outlive it: it was written before
    assert tracker.take().lines == ["staged out in 0.1 s"]
