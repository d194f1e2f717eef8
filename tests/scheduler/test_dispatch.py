"""Scheduler use cases on a database of their own: admission, capacity-bounded priority
dispatch, reasons for waiting, lease reaping, fencing of superseded attempts."""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager
from datetime import timedelta

import orjson
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler import service
from services.worker import service as worker_service
from shared.db.models import Dataset, Job, JobAttempt, JobEvent, Migration, Outbox, Tenant, Worker
from shared.events import Event, JobDispatched, utcnow
from shared.jobs.proposals import Report
from shared.jobs.states import JobState
from shared.jobs.store import Claim
from tests.factories import (
    admit_jobs,
    admitted_with_input,
    cpu_used,
    migrations_for_job,
    new_job,
)


async def _tenant(s: async_sessionmaker[AsyncSession]) -> uuid.UUID:
    tid = uuid.uuid4()
    async with s() as session, session.begin():
        session.add(Tenant(id=tid, name=f"t{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
    return tid


async def _jobs(
    s: async_sessionmaker[AsyncSession],
    tid: uuid.UUID,
    priorities: list[int],
    device: str = "cpu",
    max_retries: int = 2,
) -> list[uuid.UUID]:
    ids = []
    async with s() as session, session.begin():
        base = utcnow()
        for i, p in enumerate(priorities):
            jid = uuid.uuid4()
            ids.append(jid)
            session.add(
                new_job(
                    tid,
                    id=jid,
                    device=device,
                    priority=p,
                    max_retries=max_retries,
                    created_at=base + timedelta(milliseconds=i),
                )
            )
    async with s() as session, session.begin():
        assert await admit_jobs(session=session, job_ids=ids) == len(ids)
    return ids


async def _worker(
    s: async_sessionmaker[AsyncSession], name: str, device: str, n: int, age_s: float = 0
) -> None:
    async with s() as session, session.begin():
        session.add(
            Worker(
                id=name,
                device=device,
                concurrency=n,
                stopping=False,
                heartbeat_at=utcnow() - timedelta(seconds=age_s),
            )
        )


def _pass(s: async_sessionmaker[AsyncSession]) -> AbstractAsyncContextManager[service.Pass]:
    """A dispatch pass's transaction on the sessions' database."""
    return service.open_pass(s.kw["bind"], s)


async def _dispatch(s: async_sessionmaker[AsyncSession], slack: float = 0.0) -> list[JobDispatched]:
    async with _pass(s) as db:
        events = await service.dispatch(db, worker_ttl_s=15, slack=slack, batch=500)
    assert all(isinstance(e, JobDispatched) for e in events)
    return events  # type: ignore[return-value]


async def test_admission_is_idempotent(s: async_sessionmaker[AsyncSession]) -> None:
    tid = await _tenant(s)
    ids = await _jobs(s, tid, [0, 0])
    async with s() as session, session.begin():
        assert await admit_jobs(session=session, job_ids=ids + ids) == 0
        n = await session.scalar(
            select(func.count()).select_from(JobEvent).where(JobEvent.job_id.in_(ids))
        )
    assert n == 2


async def test_dispatch_follows_priority_and_capacity(s: async_sessionmaker[AsyncSession]) -> None:
    tid = await _tenant(s)
    ids = await _jobs(s, tid, [1, 9, 5, 9, 0])
    await _worker(s, "w1", "cpu", 2)
    first = await _dispatch(s)
    assert [e.job_id for e in first] == [ids[1], ids[3]]  # both 9s, oldest first
    assert all(e.device == "cpu" for e in first)
    assert await _dispatch(s) == []  # the two slots are taken
    async with s() as session:
        staged = await session.scalar(select(func.count()).select_from(Outbox))
    assert staged == 2  # the dispatch events wait in the outbox, same transaction


async def test_a_pass_without_staging_leaves_its_dispatches_to_publish(
    s: async_sessionmaker[AsyncSession],
) -> None:
    tid = await _tenant(s)
    ids = await _jobs(s, tid, [0, 0, 0])
    await _worker(s, "w1", "cpu", 2)
    async with service.open_pass(s.kw["bind"], s, stage_dispatches=False) as db:
        events = await service.dispatch(db, worker_ttl_s=15, slack=0.0, batch=500)
    assert {e.job_id for e in events} == set(ids[:2])  # type: ignore[attr-defined]
    assert db.to_publish == events  # for the caller, after the commit
    async with s() as session:
        staged = await session.scalar(select(func.count()).select_from(Outbox))
        dispatched = await session.scalar(
            select(func.count()).select_from(Job).where(Job.dispatched_at.is_not(None))
        )
    assert staged == 0
    assert dispatched == 2


async def test_a_dispatch_the_broker_refuses_waits_in_the_outbox(
    s: async_sessionmaker[AsyncSession],
) -> None:
    """The scheduler's dispatch step publishes after its pass commits; when RabbitMQ refuses,
    the message is staged in the outbox and the relay woken, so the job is not left for the
    re-dispatch."""
    from types import SimpleNamespace
    from typing import cast

    from services.scheduler.app import make_dispatch_step
    from services.scheduler.settings import SchedulerSettings
    from shared.runtime import Resources

    class Refusing:
        async def publish_many(self, messages: object) -> None:
            raise ConnectionError("broker away")

    wakes: list[bool] = []
    res = SimpleNamespace(
        engine=s.kw["bind"],
        sessions=s,
        broker=Refusing(),
        relay=SimpleNamespace(wake=lambda: wakes.append(True)),
    )
    tid = await _tenant(s)
    [job_id] = await _jobs(s, tid, [0])
    await _worker(s, "w1", "cpu", 1)
    step = make_dispatch_step(cast(Resources, res), SchedulerSettings(array_chunks=False))
    events = await step()
    assert isinstance(events, list)
    [event] = events
    assert isinstance(event, JobDispatched)
    assert event.job_id == job_id
    async with s() as session:
        staged = (await session.execute(select(Outbox.message_id, Outbox.routing_key))).all()
    assert [tuple(r) for r in staged] == [(event.event_id, "job.dispatch.cpu")]
    assert wakes == [True]


async def test_slack_allows_a_bounded_backlog(s: async_sessionmaker[AsyncSession]) -> None:
    tid = await _tenant(s)
    await _jobs(s, tid, [0] * 10)
    await _worker(s, "w1", "cpu", 2)
    assert len(await _dispatch(s, slack=1.0)) == 4


async def test_no_worker_means_waiting_with_a_reason(s: async_sessionmaker[AsyncSession]) -> None:
    tid = await _tenant(s)
    [cuda_job] = await _jobs(s, tid, [0], device="cuda")
    [cpu_job] = await _jobs(s, tid, [0], device="cpu")
    await _worker(s, "stale", "cpu", 4, age_s=60)  # heartbeat too old: not live
    assert await _dispatch(s) == []
    async with s() as session, session.begin():
        await service.explain_waiting(session=session, worker_ttl_s=15)
    async with s() as session:
        cuda = await session.get(Job, cuda_job)
        cpu = await session.get(Job, cpu_job)
    assert cuda is not None
    assert cpu is not None
    assert cuda.state == "QUEUED"
    assert cuda.state_reason == "waiting: no cuda worker is up"
    assert cpu.state_reason == "waiting: no cpu worker is up"


async def test_any_prefers_gpu_and_falls_back_to_cpu(s: async_sessionmaker[AsyncSession]) -> None:
    tid = await _tenant(s)
    ids = await _jobs(s, tid, [0, 0, 0], device="any")
    await _worker(s, "g", "cuda", 1)
    await _worker(s, "c", "cpu", 1)
    events = await _dispatch(s)
    assert {e.job_id: e.device for e in events} == {ids[0]: "cuda", ids[1]: "cpu"}
    [cuda_only] = await _jobs(s, tid, [9], device="cuda")
    assert await _dispatch(s) == []  # the GPU slot is busy; cuda jobs never go to a CPU
    async with s() as session:
        job = await session.get(Job, cuda_only)
    assert job is not None
    assert job.dispatched_at is None


async def _claim(
    s: async_sessionmaker[AsyncSession], jid: uuid.UUID, worker: str, lease_s: float = 30
) -> Claim:
    async with s() as session, session.begin():
        claim = await worker_service.claim(
            session=session, job_id=jid, worker=worker, lease_s=lease_s
        )
    assert claim is not None
    return claim


async def test_claim_once_and_record_once(s: async_sessionmaker[AsyncSession]) -> None:
    tid = await _tenant(s)
    [jid] = await _jobs(s, tid, [0])
    claim = await _claim(s, jid, "w1")
    assert claim.attempt == 1
    async with s() as session, session.begin():
        assert (
            await worker_service.claim(session=session, job_id=jid, worker="w2", lease_s=30) is None
        )  # a duplicate dispatch
    report = Report(JobState.SUCCEEDED, result={"estimate": 3.1}, cpu_seconds=0.5)
    async with s() as session, session.begin():
        assert await worker_service.record(session=session, claim=claim, worker="w1", report=report)
    async with s() as session, session.begin():  # a duplicate report changes nothing
        assert not await worker_service.record(
            session=session, claim=claim, worker="w1", report=report
        )
    async with s() as session:
        job = await session.get(Job, jid)
        attempts = await session.scalar(
            select(func.count()).select_from(JobAttempt).where(JobAttempt.job_id == jid)
        )
    assert job is not None
    assert (job.state, job.result, job.worker, attempts) == (
        "SUCCEEDED",
        {"estimate": 3.1},
        "w1",
        1,
    )


async def test_reaper_requeues_lost_work_then_fails_it(s: async_sessionmaker[AsyncSession]) -> None:
    tid = await _tenant(s)
    [jid] = await _jobs(s, tid, [0], max_retries=1)
    stale = await _claim(s, jid, "dead-worker", lease_s=0.01)

    async def reap() -> None:
        async with s() as session, session.begin():
            await service.requeue_lost(session=session, now=utcnow() + timedelta(seconds=1))

    await reap()
    async with s() as session:
        job = await session.get(Job, jid)
    assert job is not None
    assert (job.state, job.attempts, job.worker) == ("QUEUED", 1, None)
    assert job.run_after is not None  # backoff before the next attempt
    assert job.error == "worker lost while running the job"
    async with s() as session:  # and its wake-up, to go through a delay queue
        delays = (
            await session.execute(select(Outbox.delay_ms).where(Outbox.routing_key == "job.retry"))
        ).scalars()
        assert [800 <= (d or 0) <= 1300 for d in delays] == [True]  # 1 s ± 20 % + a margin

    async with s() as session, session.begin():
        await session.execute(update(Job).where(Job.id == jid).values(run_after=None))
    second = await _claim(s, jid, "w2", lease_s=0.01)
    assert second.attempt == 2
    # The first worker comes back and reports: fenced off, it cannot overwrite attempt 2.
    async with s() as session, session.begin():
        assert not await worker_service.record(
            session=session,
            claim=stale,
            worker="dead-worker",
            report=Report(JobState.SUCCEEDED, result={"estimate": 0}),
        )
    await reap()  # second attempt lost too: no retries left
    async with s() as session:
        job = await session.get(Job, jid)
    assert job is not None
    assert (job.state, job.attempts, job.result) == ("FAILED", 2, None)


async def test_unclaimed_dispatch_is_sent_again(s: async_sessionmaker[AsyncSession]) -> None:
    tid = await _tenant(s)
    [jid] = await _jobs(s, tid, [0])
    await _worker(s, "w1", "cpu", 1)
    assert len(await _dispatch(s)) == 1
    async with s() as session, session.begin():
        await service.redispatch_unclaimed(
            session=session, now=utcnow() + timedelta(seconds=120), after_s=60
        )
    async with s() as session:
        job = await session.get(Job, jid)
    assert job is not None
    assert (job.state, job.dispatched_at) == ("QUEUED", None)
    assert len(await _dispatch(s)) == 1


async def _tenant_with(
    s: async_sessionmaker[AsyncSession], weight: int = 1, quotas: dict[str, float] | None = None
) -> uuid.UUID:
    tid = uuid.uuid4()
    async with s() as session, session.begin():
        session.add(
            Tenant(
                id=tid, name=f"t{tid.hex[:8]}", weight=weight, quotas=quotas or {}, suspended=False
            )
        )
    return tid


async def test_fair_share_between_flooding_tenants_and_a_light_one(
    s: async_sessionmaker[AsyncSession],
) -> None:
    a = await _tenant_with(s, weight=1)
    b = await _tenant_with(s, weight=3)
    await _jobs(s, a, [9] * 30)  # a's high priority does not beat b's weight
    await _jobs(s, b, [0] * 30)
    await _worker(s, "w1", "cpu", 8)
    first = await _dispatch(s)
    assert len(first) == 8
    per = {t: sum(e.tenant_id == t for e in first) for t in (a, b)}
    assert per == {a: 2, b: 6}
    light = await _tenant_with(s)
    [lone] = await _jobs(s, light, [0])
    async with s() as session, session.begin():  # two slots free up (jobs finished)
        done = [e.job_id for e in first[:2]]
        await session.execute(update(Job).where(Job.id.in_(done)).values(state="SUCCEEDED"))
    second = await _dispatch(s)
    assert second[0].job_id == lone


async def test_max_running_jobs_keeps_jobs_queued_with_a_reason(
    s: async_sessionmaker[AsyncSession],
) -> None:
    tid = await _tenant_with(s, quotas={"max_running_jobs": 2})
    ids = await _jobs(s, tid, [0] * 5)
    await _worker(s, "w1", "cpu", 8)
    assert len(await _dispatch(s)) == 2
    assert await _dispatch(s) == []
    async with s() as session:
        job = await session.get(Job, ids[4])
    assert job is not None
    assert job.state == "QUEUED"
    assert job.state_reason == "waiting: max_running_jobs (2) reached"
    async with s() as session, session.begin():  # a quota change takes effect at once
        await session.execute(
            update(Tenant).where(Tenant.id == tid).values(quotas={"max_running_jobs": 4})
        )
    assert len(await _dispatch(s)) == 2


async def test_cpu_seconds_per_day_holds_new_dispatches(
    s: async_sessionmaker[AsyncSession],
) -> None:
    tid = await _tenant_with(s, quotas={"cpu_seconds_per_day": 10})
    [done] = await _jobs(s, tid, [0])
    async with s() as session, session.begin():
        session.add(cpu_used(done, tid, 11.0))
        await session.execute(update(Job).where(Job.id == done).values(state="SUCCEEDED"))
    [waiting] = await _jobs(s, tid, [0])
    await _worker(s, "w1", "cpu", 8)
    assert await _dispatch(s) == []
    async with s() as session:
        job = await session.get(Job, waiting)
    assert job is not None
    assert "cpu_seconds_per_day" in (job.state_reason or "")
    async with s() as session, session.begin():  # the window rolls: usage older than 24 h
        await session.execute(
            update(JobAttempt)
            .where(JobAttempt.job_id == done)
            .values(finished_at=utcnow() - timedelta(hours=25))
        )
    assert [e.job_id for e in await _dispatch(s)] == [waiting]


async def _job_with_input(
    s: async_sessionmaker[AsyncSession], tid: uuid.UUID, dataset: str, tiers: list[str]
) -> uuid.UUID:
    return await admitted_with_input(
        s,
        tid,
        dataset,
        tiers,
        kernel="stencil2d",
        params={"iterations": 1},
        inputs={"grid": dataset},
        outputs={"grid": "out.npy"},
        max_retries=0,
    )


async def test_inputs_off_local_are_staged_in_before_dispatch(
    s: async_sessionmaker[AsyncSession],
) -> None:
    tid = await _tenant(s)
    await _worker(s, "w1", "cpu", 4)
    jid = await _job_with_input(s, tid, "plate.npy", ["archive"])
    async with s() as session:
        job = await session.get(Job, jid)
        staged = await migrations_for_job(session=session, job_id=jid)
    assert job is not None
    assert (job.state, job.state_reason) == ("QUEUED", "staging in: plate.npy")
    assert [(m.dataset, m.to_tier, m.mode) for m in staged] == [("plate.npy", "local", "copy")]
    assert await _dispatch(s) == []  # not before the input is on local
    async with s() as session, session.begin():
        await session.execute(
            update(Dataset).where(Dataset.tenant_id == tid).values(tiers=["archive", "local"])
        )
    assert [e.job_id for e in await _dispatch(s)] == [jid]
    local = await _job_with_input(s, tid, "here.npy", ["local"])
    async with s() as session:
        assert await migrations_for_job(session=session, job_id=local) == []
    assert [e.job_id for e in await _dispatch(s)] == [local]


async def test_failed_stage_in_fails_the_job(s: async_sessionmaker[AsyncSession]) -> None:
    tid = await _tenant(s)
    await _worker(s, "w1", "cpu", 4)
    jid = await _job_with_input(s, tid, "cold.npy", ["s3"])
    async with s() as session, session.begin():
        await session.execute(
            update(Migration)
            .where(Migration.job_id == jid)
            .values(state="FAILED", error="s3 unreachable")
        )
    assert await _dispatch(s) == []
    async with s() as session:
        job = await session.get(Job, jid)
    assert job is not None
    assert job.state == "FAILED"
    assert job.error == "stage-in failed: cold.npy: s3 unreachable"


async def test_set_based_admission_admits_oldest_pending_with_history(
    s: async_sessionmaker[AsyncSession],
) -> None:
    tid = await _tenant(s)
    ids = []
    async with s() as session, session.begin():
        for i in range(5):
            jid = uuid.uuid4()
            ids.append(jid)
            session.add(
                new_job(
                    tid,
                    id=jid,
                    params={},
                    max_retries=0,
                    created_at=utcnow() + timedelta(milliseconds=i),
                )
            )
    async with _pass(s) as db:
        assert await service.admit(db, limit=3, tiers=["local"]) == 3
    async with s() as session:
        states = {
            j.id: j.state
            for j in (await session.execute(select(Job).where(Job.id.in_(ids)))).scalars()
        }
        history = (
            await session.execute(
                select(JobEvent.job_id, JobEvent.from_state, JobEvent.to_state).where(
                    JobEvent.job_id.in_(ids)
                )
            )
        ).all()
    assert [states[i] for i in ids] == ["QUEUED"] * 3 + ["PENDING"] * 2
    assert sorted((h.job_id, h.from_state, h.to_state) for h in history) == sorted(
        (i, "PENDING", "QUEUED") for i in ids[:3]
    )
    async with _pass(s) as db:
        assert await service.admit(db, limit=10, tiers=["local"]) == 2


def _ids(events: list[Event]) -> list[uuid.UUID]:
    return [e.job_id for e in events if isinstance(e, JobDispatched)]


async def test_admission_stages_inputs_in_within_the_pass(
    s: async_sessionmaker[AsyncSession],
) -> None:
    """The raw pass hands a job with inputs to the datamover's session code, on the same
    connection and in the same transaction (a savepoint), and dispatches the rest at once."""
    tid = await _tenant(s)
    await _worker(s, "w1", "cpu", 4)
    staged, plain = uuid.uuid4(), uuid.uuid4()
    async with s() as session, session.begin():
        session.add(
            Dataset(
                id=uuid.uuid4(),
                tenant_id=tid,
                name="far.npy",
                size=8,
                checksum="xxh3-128:00",
                tier="archive",
                tiers=["archive"],
            )
        )
        session.add(new_job(tid, id=staged, inputs={"grid": "far.npy"}, max_retries=0))
        session.add(new_job(tid, id=plain, created_at=utcnow() + timedelta(milliseconds=1)))
    async with _pass(s) as db:
        assert await service.admit(db, limit=10, tiers=["local", "archive"]) == 2
        events = await service.dispatch(db, worker_ttl_s=15, slack=0.0, batch=500)
    assert _ids(events) == [plain]  # ``staged`` waits for its input
    async with s() as session:
        job = await session.get(Job, staged)
        migrations = await migrations_for_job(session=session, job_id=staged)
    assert job is not None
    assert (job.state, job.state_reason) == ("QUEUED", "staging in: far.npy")
    assert [(m.dataset, m.to_tier) for m in migrations] == [("far.npy", "local")]


async def test_a_failed_pass_leaves_nothing_behind(s: async_sessionmaker[AsyncSession]) -> None:
    tid = await _tenant(s)
    await _worker(s, "w1", "cpu", 4)
    async with s() as session, session.begin():
        session.add(new_job(tid, id=(jid := uuid.uuid4())))

    async def failing_pass() -> None:
        async with _pass(s) as db:
            await service.admit(db, limit=10, tiers=["local"])
            assert len(await service.dispatch(db, worker_ttl_s=15, slack=0.0, batch=500)) == 1
            raise RuntimeError("the pass fails before it commits")

    with pytest.raises(RuntimeError):
        await failing_pass()
    async with s() as session:
        job = await session.get(Job, jid)
        staged = await session.scalar(select(func.count()).select_from(Outbox))
        history = await session.scalar(
            select(func.count()).select_from(JobEvent).where(JobEvent.job_id == jid)
        )
    assert job is not None
    assert (job.state, job.dispatched_at, staged, history) == ("PENDING", None, 0, 0)
    async with _pass(s) as db:  # the next pass does it all
        await service.admit(db, limit=10, tiers=["local"])
        events = await service.dispatch(db, worker_ttl_s=15, slack=0.0, batch=500)
    assert _ids(events) == [jid]


async def test_concurrent_passes_never_dispatch_a_job_twice(
    s: async_sessionmaker[AsyncSession],
) -> None:
    """Two schedulers' passes overlap: the second sees the first's chosen jobs still waiting
    (not committed) but skips them (SKIP LOCKED); each job goes out once, with one event."""
    tid = await _tenant(s)
    ids = await _jobs(s, tid, list(range(9, -1, -1)))  # best first
    await _worker(s, "w1", "cpu", 20)
    async with _pass(s) as first:
        a = await service.dispatch(first, worker_ttl_s=15, slack=0.0, batch=4)
        assert _ids(a) == ids[:4]
        async with _pass(s) as second:  # meanwhile, on another connection
            b = await service.dispatch(second, worker_ttl_s=15, slack=0.0, batch=500)
        assert _ids(b) == ids[4:]
    async with _pass(s) as third:
        assert await service.dispatch(third, worker_ttl_s=15, slack=0.0, batch=500) == []
    async with s() as session:
        staged = (await session.execute(select(Outbox.body))).scalars().all()
        dispatched = await session.scalar(
            select(func.count()).select_from(Job).where(Job.dispatched_at.is_not(None))
        )
    assert dispatched == 10
    assert sorted(str(i) for i in ids) == sorted(
        orjson.loads(b)["job_id"] for b in staged
    )  # one event per job


async def test_jobs_in_flight_hold_their_timeout_against_the_cpu_budget(
    s: async_sessionmaker[AsyncSession],
) -> None:
    tid = await _tenant_with(s, quotas={"cpu_seconds_per_day": 100})
    ids = await _jobs(s, tid, [0] * 5)  # timeout_s 60 each
    await _worker(s, "w1", "cpu", 8)
    first = await _dispatch(s)
    assert [e.job_id for e in first] == ids[:2]  # 0 < 100, then 60 < 100; 120 is not
    assert await _dispatch(s) == []
    async with s() as session:
        job = await session.get(Job, ids[2])
    assert job is not None
    assert "cpu_seconds_per_day" in (job.state_reason or "")
    async with s() as session, session.begin():  # one ends: its 5 s replace its 60 s hold
        session.add(cpu_used(ids[0], tid, 5.0, ago_s=1))
        await session.execute(update(Job).where(Job.id == ids[0]).values(state="SUCCEEDED"))
    assert [e.job_id for e in await _dispatch(s)] == [ids[2]]  # 5 + 60 < 100


async def test_a_tenant_alone_keeps_a_slot_free_for_one_that_comes_later(
    s: async_sessionmaker[AsyncSession],
) -> None:
    hog = await _tenant_with(s)
    small = await _tenant_with(s)
    await _jobs(s, hog, [0] * 10)
    await _worker(s, "w1", "cpu", 4)
    sent = await _dispatch(s, slack=4.0)
    assert len(sent) == 3  # neither the fourth slot nor the slack
    assert await _dispatch(s, slack=4.0) == []
    [tiny] = await _jobs(s, small, [0])
    sent = await _dispatch(s, slack=4.0)  # the slot kept free, ahead of the hog's next jobs
    assert sent[0].job_id == tiny


async def test_with_no_slot_reserved_a_tenant_alone_fills_the_slots_and_the_slack(
    s: async_sessionmaker[AsyncSession],
) -> None:
    hog = await _tenant_with(s)
    await _jobs(s, hog, [0] * 30)
    await _worker(s, "w1", "cpu", 4)
    async with _pass(s) as db:
        fair = service.FairShareSettings(reserved_slots=0)
        sent = await service.dispatch(db, worker_ttl_s=15, slack=4.0, batch=500, fair=fair)
    assert len(sent) == 20


async def test_a_lost_attempt_is_counted_once(s: async_sessionmaker[AsyncSession]) -> None:
    tid = await _tenant(s)
    [jid] = await _jobs(s, tid, [0])
    lost = await _claim(s, jid, "dead-worker", lease_s=0.01)
    for _ in range(2):  # a second pass of the reaper finds nothing more to count
        async with s() as session, session.begin():
            await service.requeue_lost(session=session, now=utcnow() + timedelta(seconds=1))
    async with s() as session, session.begin():  # the worker comes back: fenced, not counted
        assert not await worker_service.record(
            session=session,
            claim=lost,
            worker="dead-worker",
            report=Report(JobState.SUCCEEDED, result={"estimate": 0}, cpu_seconds=9.0),
        )
    async with s() as session:
        rows = (
            await session.execute(
                select(JobAttempt.attempt, JobAttempt.outcome, JobAttempt.cpu_seconds).where(
                    JobAttempt.job_id == jid
                )
            )
        ).all()
    assert [(a, o) for a, o, _ in rows] == [(1, "LOST")]
    assert 0 <= rows[0][2] < 5  # its slot was held from its start to its lease's end


@pytest.mark.parametrize(
    ("run_s", "slack_max", "sent"),
    [
        (None, 16.0, 10),  # no job run yet: the slack, 2 x (1 + 4)
        (1.0, 16.0, 10),  # long jobs: the slack
        (0.02, 16.0, 12),  # 0.1 s of 20 ms jobs: 5 a slot beyond it, 2 x (1 + 5)
        (0.002, 16.0, 34),  # 2 ms jobs: at most slack_max, 2 x (1 + 16)
        (0.002, None, 10),  # no slack_max: the slack alone
    ],
)
async def test_short_jobs_are_dispatched_further_ahead_of_the_slots(
    s: async_sessionmaker[AsyncSession], run_s: float | None, slack_max: float | None, sent: int
) -> None:
    """A worker whose recent jobs were short (``workers.run_s``) gets enough jobs in flight
    to keep its slots busy for ``ahead_s``, between ``slack`` and ``slack_max`` times its
    slots beyond them; and no more on the next pass while they are in flight."""
    tid = await _tenant(s)
    await _jobs(s, tid, [0] * 50)
    await _worker(s, "w1", "cpu", 2)
    async with s() as session, session.begin():
        await session.execute(update(Worker).where(Worker.id == "w1").values(run_s=run_s))

    async def dispatch() -> list[Event]:
        async with _pass(s) as db:
            return await service.dispatch(
                db, worker_ttl_s=15, slack=4.0, batch=500, slack_max=slack_max, ahead_s=0.1
            )

    assert len(await dispatch()) == sent
    assert await dispatch() == []  # all in flight: nothing more until some end
