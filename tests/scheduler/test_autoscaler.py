"""The autoscaler loop on a database of its own with an in-memory backend: what counts as a
pool's demand (and what is blocked: quotas, suspension, retry backoff, stage-in), what it writes
to ``worker_pools``, one autoscaler at a time, and a restarted scheduler keeping the cooldown
it had."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler.autoscaler import ADVISORY_LOCK, HISTORY, Autoscaler
from services.scheduler.demand import Demand, pool_demand
from services.scheduler.settings import AutoscaleSettings, CudaPoolSettings, PoolSettings
from shared.db.models import Dataset, Job, JobAttempt, Migration, Tenant, WorkerPool
from shared.events import utcnow
from shared.telemetry import REGISTRY
from tests.factories import admitted_with_input, cpu_used, new_job


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


def _settings(cooldown_s: float = 60.0) -> AutoscaleSettings:
    return AutoscaleSettings(
        enabled=True,
        cooldown_s=cooldown_s,
        target_jobs_per_worker=4,
        cpu=PoolSettings(min_workers=1, max_workers=4),
        cuda=CudaPoolSettings(min_workers=0, max_workers=2, target_jobs_per_worker=1),
    )


async def _jobs(
    s: async_sessionmaker[AsyncSession],
    specs: Sequence[Mapping[str, object]],
    *,
    quotas: dict[str, float] | None = None,
    suspended: bool = False,
) -> uuid.UUID:
    tid = uuid.uuid4()
    async with s() as session, session.begin():
        session.add(
            Tenant(
                id=tid, name=f"t{tid.hex[:8]}", weight=1, quotas=quotas or {}, suspended=suspended
            )
        )
    async with s() as session, session.begin():
        session.add_all(new_job(tid, **spec) for spec in specs)
    return tid


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
        demand = await pool_demand(session=session, any_pool="cpu")
    assert demand["cpu"] == Demand(queued=7, running=0)
    assert demand["cuda"] == Demand(queued=1, running=1)


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
    for i in range(HISTORY + 5):
        backend.counts["cpu"] = 3  # something (a person) started workers: idle, step down
        await scaler.step(s)
        assert backend.counts["cpu"] == 2, i
    decisions = (await _pools(s))["cpu"].decisions
    assert len(decisions) == HISTORY
    assert all(d["action"] == "down" for d in decisions)


async def test_one_autoscaler_at_a_time(s: async_sessionmaker[AsyncSession]) -> None:
    await _jobs(s, [{"device": "cpu"} for _ in range(16)])
    backend = MemoryBackend(cpu=1)
    scaler = Autoscaler(_settings(), backend, worker_ttl_s=15)
    async with s() as other, other.begin():  # another scheduler is in the middle of a pass
        assert await other.scalar(select(func.pg_advisory_xact_lock(ADVISORY_LOCK))) is None
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


# Demand is only the work a worker could be given now: the waiting jobs that tenant quotas,
# a suspension, a retry's backoff or a stage-in block are not (they count as ``blocked``,
# ``held_jobs`` in the API).

RUNNING = {"device": "cpu", "state": "RUNNING", "assigned_device": "cpu"}
QUEUED = {"device": "cpu", "state": "QUEUED"}


async def _demand(s: async_sessionmaker[AsyncSession]) -> dict[str, Demand]:
    async with s() as session:
        return await pool_demand(session=session, any_pool="cpu")


async def test_a_tenant_at_max_running_jobs_adds_only_its_running_jobs(
    s: async_sessionmaker[AsyncSession],
) -> None:
    tid = await _jobs(
        s,
        [RUNNING, RUNNING, *(QUEUED for _ in range(30)), *({"device": "cpu"} for _ in range(5))],
        quotas={"max_running_jobs": 2},
    )
    assert (await _demand(s))["cpu"] == Demand(queued=0, running=2, blocked=35)
    backend = MemoryBackend(cpu=1)
    assert await Autoscaler(_settings(), backend, worker_ttl_s=15).step(s) == []
    assert backend.counts["cpu"] == 1  # 35 waiting jobs start no worker that gets nothing
    cpu = (await _pools(s))["cpu"]
    assert (cpu.queued_jobs, cpu.running_jobs, cpu.held_jobs) == (0, 2, 35)
    assert REGISTRY.get_sample_value("stratus_pool_held_jobs", {"pool": "cpu"}) == 35
    assert (
        REGISTRY.get_sample_value("stratus_pool_demand_jobs", {"pool": "cpu", "state": "queued"})
        == 0
    )
    async with s() as session, session.begin():  # a quota change counts at once
        await session.execute(
            update(Tenant).where(Tenant.id == tid).values(quotas={"max_running_jobs": 5})
        )
    assert (await _demand(s))["cpu"] == Demand(queued=3, running=2, blocked=32)


async def test_jobs_in_flight_use_up_a_tenants_headroom(
    s: async_sessionmaker[AsyncSession],
) -> None:
    await _jobs(
        s,
        [
            RUNNING,
            {**QUEUED, "dispatched_at": utcnow(), "assigned_device": "cpu"},  # sent: demand
            *(QUEUED for _ in range(10)),
        ],
        quotas={"max_running_jobs": 4},
    )
    await _jobs(s, [QUEUED for _ in range(3)])  # another tenant, default quotas: all count
    assert (await _demand(s))["cpu"] == Demand(queued=1 + 2 + 3, running=1, blocked=8)


async def test_a_tenant_out_of_cpu_seconds_per_day_adds_none_of_its_waiting_jobs(
    s: async_sessionmaker[AsyncSession],
) -> None:
    done = uuid.uuid4()
    tid = await _jobs(
        s,
        [
            {"id": done, "state": "SUCCEEDED"},
            {**RUNNING, "timeout_s": 5},  # holds 5 s of the budget while it runs
            *(QUEUED for _ in range(8)),
        ],
        quotas={"cpu_seconds_per_day": 10},
    )
    async with s() as session, session.begin():
        session.add(cpu_used(done, tid, 11.0))
    assert (await _demand(s))["cpu"] == Demand(queued=0, running=1, blocked=8)
    async with s() as session, session.begin():  # the 24 h window rolls past that usage
        await session.execute(
            update(JobAttempt)
            .where(JobAttempt.job_id == done)
            .values(finished_at=utcnow() - timedelta(hours=25))
        )
    assert (await _demand(s))["cpu"] == Demand(queued=8, running=1, blocked=0)


async def test_jobs_in_flight_that_hold_the_cpu_budget_leave_no_demand(
    s: async_sessionmaker[AsyncSession],
) -> None:
    await _jobs(
        s,
        [{**RUNNING, "timeout_s": 60}, *(QUEUED for _ in range(8))],
        quotas={"cpu_seconds_per_day": 50},
    )
    assert (await _demand(s))["cpu"] == Demand(queued=0, running=1, blocked=8)


async def test_a_suspended_tenants_waiting_jobs_do_not_count(
    s: async_sessionmaker[AsyncSession],
) -> None:
    tid = await _jobs(
        s,
        [
            RUNNING,  # still runs on its worker: demand until it ends
            *(QUEUED for _ in range(4)),
            {"device": "cuda"},
            {"device": "cpu"},
        ],
        suspended=True,
    )
    demand = await _demand(s)
    assert demand["cpu"] == Demand(queued=0, running=1, blocked=5)
    assert demand["cuda"] == Demand(queued=0, running=0, blocked=1)
    async with s() as session, session.begin():
        await session.execute(update(Tenant).where(Tenant.id == tid).values(suspended=False))
    demand = await _demand(s)
    assert demand["cpu"] == Demand(queued=5, running=1, blocked=0)
    assert demand["cuda"] == Demand(queued=1, running=0, blocked=0)


async def test_a_job_in_retry_backoff_counts_once_it_is_due(
    s: async_sessionmaker[AsyncSession],
) -> None:
    later = uuid.uuid4()
    async with s() as session:
        now = await session.scalar(select(func.now()))
    assert now is not None
    await _jobs(
        s,
        [
            {**QUEUED, "id": later, "attempts": 1, "run_after": now + timedelta(hours=1)},
            {**QUEUED, "attempts": 1, "run_after": now - timedelta(seconds=1)},  # due
            QUEUED,
        ],
    )
    assert (await _demand(s))["cpu"] == Demand(queued=2, running=0, blocked=1)
    async with s() as session, session.begin():
        await session.execute(
            update(Job)
            .where(Job.id == later)
            .values(run_after=func.now() - text("interval '1 second'"))
        )
    assert (await _demand(s))["cpu"] == Demand(queued=3, running=0, blocked=0)


async def test_a_job_staging_in_its_inputs_does_not_count(
    s: async_sessionmaker[AsyncSession],
) -> None:
    tid = await _jobs(s, [QUEUED])  # no inputs: counts

    async def with_input(dataset: str, tier: str) -> uuid.UUID:
        return await admitted_with_input(
            s, tid, dataset, [tier], inputs={"a": dataset, "b": dataset}
        )

    staging = await with_input("plate.npy", "archive")
    await with_input("here.npy", "local")  # already on local: no stage-in, counts
    async with s() as session:
        job = await session.get(Job, staging)
    assert job is not None
    assert (job.state, job.state_reason) == ("QUEUED", "staging in: plate.npy")
    assert (await _demand(s))["cpu"] == Demand(queued=2, running=0, blocked=1)
    failed = await with_input("cold.npy", "s3")
    assert (await _demand(s))["cpu"] == Demand(queued=2, running=0, blocked=2)
    async with s() as session, session.begin():
        # the stage-in failed: the dispatcher fails the job, which needs a worker's slot
        await session.execute(
            update(Migration).where(Migration.job_id == failed).values(state="FAILED", error="x")
        )
    assert (await _demand(s))["cpu"] == Demand(queued=3, running=0, blocked=1)
    async with s() as session, session.begin():  # the copy to local is done
        await session.execute(
            update(Dataset).where(Dataset.name == "plate.npy").values(tiers=["archive", "local"])
        )
    assert (await _demand(s))["cpu"] == Demand(queued=4, running=0, blocked=0)
