"""The autoscaler loop on a database of its own with an in-memory backend: what counts as a
pool's demand, what it writes to ``worker_pools``, one autoscaler at a time, and a restarted
scheduler keeping the cooldown it had."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler import scaling
from services.scheduler.scaling import Autoscaler
from services.scheduler.settings import AutoscaleSettings, CudaPoolSettings, PoolSettings
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.models import Tenant, WorkerPool
from shared.settings import CommonSettings
from tests.factories import new_job
from tools.cluster import drop_database, prepare_database


class MemoryBackend:
    name = "memory"
    acts = True

    def __init__(self, **counts: int) -> None:
        self.counts = {"cpu": 0, "cuda": 0, **counts}
        self.calls: list[tuple[str, int]] = []

    async def current(self, pool: str) -> int:
        return self.counts[pool]

    async def scale(self, pool: str, target: int, *, busy: Mapping[str, int]) -> int:
        self.calls.append((pool, target))
        self.counts[pool] = target
        return target

    async def close(self) -> None:
        return None


@pytest.fixture(scope="module")
async def db(settings: CommonSettings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    name = f"{settings.postgres.database}_scale"
    prepare_database(name)
    engine = make_engine(settings.postgres.model_copy(update={"database": name}))
    yield make_sessionmaker(engine)
    await engine.dispose()
    drop_database(name)


@pytest.fixture
async def s(
    db: async_sessionmaker[AsyncSession],
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with db() as session, session.begin():
        await session.execute(text("TRUNCATE tenants, workers, worker_pools CASCADE"))
    return db


def _settings(cooldown_s: float = 60.0) -> AutoscaleSettings:
    return AutoscaleSettings(
        enabled=True,
        cooldown_s=cooldown_s,
        target_jobs_per_worker=4,
        cpu=PoolSettings(min_workers=1, max_workers=4),
        cuda=CudaPoolSettings(min_workers=0, max_workers=2, target_jobs_per_worker=1),
    )


async def _jobs(s: async_sessionmaker[AsyncSession], specs: list[dict[str, object]]) -> None:
    tid = uuid.uuid4()
    async with s() as session, session.begin():
        session.add(Tenant(id=tid, name=f"t{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
    async with s() as session, session.begin():
        session.add_all(new_job(tid, **spec) for spec in specs)


async def _pools(s: async_sessionmaker[AsyncSession]) -> dict[str, WorkerPool]:
    async with s() as session:
        return {p.pool: p for p in (await session.scalars(select(WorkerPool))).all()}


async def test_demand_counts_waiting_and_running_jobs_per_pool(
    s: async_sessionmaker[AsyncSession],
) -> None:
    await _jobs(
        s,
        [
            *({"device": "cpu"} for _ in range(5)),  # PENDING
            {"device": "cpu", "state": "QUEUED"},  # undispatched: no worker yet
            {"device": "any", "state": "QUEUED"},  # counts for cpu
            {"device": "any", "state": "RUNNING", "assigned_device": "cuda"},
            {"device": "cuda", "state": "QUEUED"},
            {"device": "cpu", "state": "SUCCEEDED"},  # done: no demand
        ],
    )
    async with s() as session:
        demand = await scaling.pool_demand(session=session, any_pool="cpu")
    assert demand["cpu"] == scaling.Demand(queued=7, running=0)
    assert demand["cuda"] == scaling.Demand(queued=1, running=1)


async def test_a_pass_scales_both_pools_and_records_them(
    s: async_sessionmaker[AsyncSession],
) -> None:
    await _jobs(s, [*({"device": "cpu"} for _ in range(9)), {"device": "cuda"}])
    backend = MemoryBackend(cpu=1)
    scaler = Autoscaler(_settings(), backend, worker_ttl_s=15)
    acted = await scaler.step(s)
    assert {(d.current, d.target) for d in acted} == {(1, 3), (0, 1)}
    assert backend.counts == {"cpu": 3, "cuda": 1}
    pools = await _pools(s)
    assert pools["cpu"].current_workers == 3
    assert pools["cpu"].desired_workers == 3
    assert pools["cpu"].queued_jobs == 9
    assert pools["cuda"].min_workers == 0
    assert pools["cpu"].decisions[-1]["action"] == "up"
    assert pools["cpu"].decisions[-1]["to"] == 3
    assert pools["cpu"].backend == "memory"
    # nothing changed: a second pass holds and keeps the history
    assert await scaler.step(s) == []
    assert len((await _pools(s))["cpu"].decisions) == 1


async def test_history_is_bounded(s: async_sessionmaker[AsyncSession]) -> None:
    backend = MemoryBackend(cpu=1)
    scaler = Autoscaler(_settings(cooldown_s=0), backend, worker_ttl_s=15)
    for i in range(scaling.HISTORY + 5):
        backend.counts["cpu"] = 3  # something (a person) started workers: idle, step down
        await scaler.step(s)
        assert backend.counts["cpu"] == 2, i
    decisions = (await _pools(s))["cpu"].decisions
    assert len(decisions) == scaling.HISTORY
    assert all(d["action"] == "down" for d in decisions)


async def test_one_autoscaler_at_a_time(s: async_sessionmaker[AsyncSession]) -> None:
    await _jobs(s, [{"device": "cpu"} for _ in range(16)])
    backend = MemoryBackend(cpu=1)
    scaler = Autoscaler(_settings(), backend, worker_ttl_s=15)
    async with s() as other, other.begin():  # another scheduler is in the middle of a pass
        assert await other.scalar(select(func.pg_advisory_xact_lock(scaling.ADVISORY_LOCK))) is None
        assert await scaler.step(s) == []
        assert backend.calls == []
    assert [(d.current, d.target) for d in await scaler.step(s)] == [(1, 4)]


async def test_a_restarted_scheduler_keeps_the_cooldown(
    s: async_sessionmaker[AsyncSession],
) -> None:
    backend = MemoryBackend(cpu=4)
    first = Autoscaler(_settings(cooldown_s=3600), backend, worker_ttl_s=15)
    assert await first.step(s) == []  # idle and over-provisioned: the cooldown starts
    since = (await _pools(s))["cpu"].over_provisioned_since
    assert since is not None
    second = Autoscaler(_settings(cooldown_s=3600), backend, worker_ttl_s=15)
    assert await second.step(s) == []
    assert second.scalers["cpu"].over_since == pytest.approx(since.timestamp())
    async with s() as session, session.begin():  # an hour has passed since it started
        await session.execute(
            text("UPDATE worker_pools SET over_provisioned_since = now() - interval '2 hours'")
        )
    third = Autoscaler(_settings(cooldown_s=3600), backend, worker_ttl_s=15)
    assert [(d.current, d.target) for d in await third.step(s)] == [(4, 3)]


async def test_an_observing_backend_counts_heartbeats_and_says_each_advice_once(
    s: async_sessionmaker[AsyncSession],
) -> None:
    from services.scheduler.backends.external import ObservingBackend
    from services.worker import service as worker_service

    await _jobs(s, [{"device": "cpu"} for _ in range(12)])
    async with s() as session, session.begin():
        await worker_service.heartbeat(
            session=session, worker="pod-a", device="cpu", concurrency=2, lease_s=30
        )
    scaler = Autoscaler(_settings(), ObservingBackend(), worker_ttl_s=15)
    first = await scaler.step(s)  # it would go from 1 live worker to 3; KEDA does it
    assert [(d.action, d.current, d.target) for d in first] == [("up", 1, 3)]
    assert await scaler.step(s) == []  # the same advice is not repeated
    cpu = (await _pools(s))["cpu"]
    assert cpu.backend == "kubernetes"
    assert cpu.current_workers == 1
    assert cpu.desired_workers == 3
    assert len(cpu.decisions) == 1
