"""``usage_hours``, the tenants' attempts summed by the hour (migration 0014): whichever path
writes an attempt, its hour counts it once; the dispatch pass reads fair share's decayed
usage and ``cpu_seconds_per_day``'s day from it, as ``shared.jobs.usage`` defines them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.scheduler import runnable
from services.scheduler import service as scheduler_service
from services.worker import service as worker_service
from services.worker.batch import Claims, Records
from shared.db.models import Job, JobAttempt, Tenant
from shared.events import utcnow
from shared.jobs.proposals import Cancelled, Report
from shared.jobs.states import JobState
from shared.jobs.store import Claim, Finish, set_job_state
from shared.jobs.usage import HOUR_S, count_attempt, decayed
from shared.settings import CommonSettings, QuotaDefaults
from tests.factories import admit_jobs, cpu_used, new_job, own_database

Sessions = async_sessionmaker[AsyncSession]
Buckets = dict[tuple[uuid.UUID, datetime], tuple[int, float, float]]
ROOT = Path(__file__).resolve().parents[2]

# What the buckets must always equal: job_attempts grouped by tenant and hour (UTC).
GROUPED = """
SELECT tenant_id, date_trunc('hour', finished_at, 'UTC'), count(*)::int,
       sum(cpu_seconds), sum(gpu_seconds)
FROM job_attempts GROUP BY 1, 2
"""
BUCKETS = """
SELECT tenant_id, hour, attempts, cpu_seconds, gpu_seconds FROM usage_hours
WHERE attempts <> 0 OR cpu_seconds <> 0 OR gpu_seconds <> 0
"""
# Fair share's usage as the dispatch pass summed it over the attempts themselves before the
# buckets: the reference the buckets stand for.
PER_ATTEMPT = """
SELECT coalesce(sum(cpu_seconds * power(
           0.5, extract(epoch FROM now() - finished_at)::float8 / :hl)), 0)
FROM job_attempts WHERE tenant_id = :t AND finished_at > now() - interval '1 day'
"""


async def _rows(s: Sessions, sql: str) -> Buckets:
    async with s() as session:
        rows = await session.execute(text(sql))
        return {(t, h): (n, float(cpu), float(gpu)) for t, h, n, cpu, gpu in rows}


async def assert_buckets_sum_the_attempts(s: Sessions) -> Buckets:
    grouped, buckets = await _rows(s, GROUPED), await _rows(s, BUCKETS)
    assert grouped.keys() == buckets.keys()
    for key, (n, cpu, gpu) in grouped.items():
        assert buckets[key][0] == n
        assert buckets[key][1:] == pytest.approx((cpu, gpu))
    return buckets


async def _tenant(s: Sessions) -> uuid.UUID:
    tid = uuid.uuid4()
    async with s() as session, session.begin():
        session.add(Tenant(id=tid, name=f"u{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
    return tid


async def _finished_jobs(s: Sessions, tid: uuid.UUID, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    async with s() as session, session.begin():
        session.add_all(new_job(tid, id=j, state="SUCCEEDED", attempts=1) for j in ids)
    return ids


async def _used(s: Sessions, tid: uuid.UUID, ago_h_cpu: list[tuple[float, float]]) -> None:
    """Attempts of ``tid`` that ended ``ago`` hours ago with ``cpu`` seconds, one job each."""
    ids = await _finished_jobs(s, tid, len(ago_h_cpu))
    async with s() as session, session.begin():
        session.add_all(
            cpu_used(j, tid, cpu, ago_s=ago * HOUR_S)
            for j, (ago, cpu) in zip(ids, ago_h_cpu, strict=True)
        )


def _engine(s: Sessions) -> AsyncEngine:
    return cast(AsyncEngine, s.kw["bind"])


async def _running(s: Sessions, tid: uuid.UUID, n: int, *, lease_s: float = 30) -> list[Claim]:
    ids = [uuid.uuid4() for _ in range(n)]
    async with s() as session, session.begin():
        session.add_all(new_job(tid, id=j) for j in ids)
    async with s() as session, session.begin():
        assert await admit_jobs(session=session, job_ids=ids) == n
    claims = Claims(_engine(s), s, worker="w1", lease_s=lease_s)
    found = await asyncio.gather(*(claims.claim(j) for j in ids))
    return [c for c in found if c is not None]


async def test_every_path_that_writes_an_attempt_counts_it_once_in_its_hour(s: Sessions) -> None:
    a, b = await _tenant(s), await _tenant(s)
    # the worker's batch statement (finish_attempts), twice: the repeat is fenced
    batch = await _running(s, a, 3) + await _running(s, b, 2)
    records = Records(_engine(s), worker="w1")
    finishes = [
        Finish(c.job_id, c.tenant_id, c.attempt, Report(JobState.SUCCEEDED, cpu_seconds=1.5))
        for c in batch
    ]
    assert await asyncio.gather(*(records.record(f) for f in finishes)) == [True] * 5
    assert await asyncio.gather(*(records.record(f) for f in finishes)) == [False] * 5
    # the general path: an attempt the user cancelled while it ran, reported twice
    [cancelled] = await _running(s, a, 1)
    async with s() as session, session.begin():
        assert (await set_job_state(session, cancelled.job_id, Cancelled())).accepted
    stopped = Report(JobState.CANCELLED, error="cancelled while running", cpu_seconds=0.25)
    for _ in range(2):
        async with s() as session, session.begin():
            await worker_service.record(
                session=session, claim=cancelled, worker="w1", report=stopped
            )
    # the reaper: lost workers' attempts, charged the time they held their slots
    lost = await _running(s, b, 1, lease_s=0.001) + await _running(s, a, 1, lease_s=0.001)
    async with s() as session, session.begin():
        reaped = await scheduler_service.requeue_lost(
            session=session, now=utcnow() + timedelta(seconds=1)
        )
    assert {r.job_id for r in reaped} == {c.job_id for c in lost}
    # rows written directly, in hours past, and a repeat of one that counts nothing
    await _used(s, a, [(3, 4.0), (3.2, 6.0), (30, 8.0)])
    [again] = await _finished_jobs(s, b, 1)
    for _ in range(2):
        async with s() as session, session.begin():
            await count_attempt(
                session,
                job_id=again,
                tenant_id=b,
                attempt=1,
                worker="w2",
                outcome="FAILED",
                cpu_seconds=2.0,
                wall_seconds=2.0,
            )
    buckets = await assert_buckets_sum_the_attempts(s)
    assert sum(n for n, _, _ in buckets.values()) == 5 + 1 + 2 + 3 + 1
    lost_s = 0.001  # the lost attempt held its slot for its lease
    assert sum(cpu for (t, _), (_, cpu, _) in buckets.items() if t == a) == pytest.approx(
        3 * 1.5 + 0.25 + lost_s + 4.0 + 6.0 + 8.0
    )


async def test_an_attempt_moved_or_deleted_moves_its_usage_with_it(s: Sessions) -> None:
    tid = await _tenant(s)
    await _used(s, tid, [(1, 5.0), (2, 7.0), (2.1, 1.0)])
    async with s() as session, session.begin():
        moved = await session.scalar(
            update(JobAttempt)
            .where(JobAttempt.tenant_id == tid, JobAttempt.cpu_seconds == 5.0)
            .values(finished_at=utcnow() - timedelta(hours=25), gpu_seconds=0.5)
            .returning(JobAttempt.job_id)
        )
        await session.execute(  # nothing that counts changes: no bucket changes
            update(JobAttempt).where(JobAttempt.tenant_id == tid).values(worker="renamed")
        )
    await assert_buckets_sum_the_attempts(s)
    async with s() as session, session.begin():  # a job's deletion takes its attempts
        await session.execute(delete(Job).where(Job.id == moved))
    buckets = await assert_buckets_sum_the_attempts(s)
    assert sum(cpu for _, cpu, _ in buckets.values()) == pytest.approx(8.0)  # 7 + 1 left
    async with s() as session, session.begin():  # and a tenant's, its buckets
        await session.execute(delete(Tenant).where(Tenant.id == tid))
    assert await _rows(s, BUCKETS) == {}
    assert await _rows(s, GROUPED) == {}


async def test_concurrent_writers_of_the_same_buckets_neither_deadlock_nor_lose_usage(
    s: Sessions,
) -> None:
    tenants = [await _tenant(s) for _ in range(3)]
    jobs = {t: await _finished_jobs(s, t, 8) for t in tenants}

    async def write(i: int) -> None:
        # one statement writes every tenant's attempt i, the tenants in an order of its own
        order = tenants[i % 3 :] + tenants[: i % 3]
        if i % 2:
            order.reverse()
        async with s() as session, session.begin():
            await session.execute(
                text(
                    "INSERT INTO job_attempts (job_id, attempt, tenant_id, outcome,"
                    " cpu_seconds, gpu_seconds, wall_seconds, finished_at)"
                    " SELECT j, 1, t, 'SUCCEEDED', :cpu, 0, 1, now() - make_interval(hours => :h)"
                    " FROM unnest(CAST(:j AS uuid[]), CAST(:t AS uuid[])) AS r(j, t)"
                ),
                {"j": [jobs[t][i] for t in order], "t": order, "cpu": float(i + 1), "h": i % 2},
            )

    await asyncio.gather(*(write(i) for i in range(8)))
    buckets = await assert_buckets_sum_the_attempts(s)
    for t in tenants:
        assert sum(cpu for (u, _), (_, cpu, _) in buckets.items() if u == t) == pytest.approx(36)


async def _queued(s: Sessions, tid: uuid.UUID) -> None:
    async with s() as session, session.begin():
        job = new_job(tid)
        session.add(job)
    async with s() as session, session.begin():
        assert await admit_jobs(session=session, job_ids=[job.id]) == 1


async def _pass_view(
    s: Sessions, half_life_s: float
) -> tuple[runnable.Waiting, datetime, dict[uuid.UUID, float], Buckets]:
    """The pass's candidates, with in the same transaction (one now()) the reference
    per-attempt usage of each tenant and the buckets with their moments."""
    async with scheduler_service.open_pass(s.kw["bind"], s) as p:
        waiting = await runnable.candidates(
            p.conn,
            device="cpu",
            per_tenant=10,
            quota_defaults=QuotaDefaults(),
            half_life_s=half_life_s,
        )
        now = await p.conn.fetchval("SELECT now()")
        sql = PER_ATTEMPT.replace(":hl", "$2::float8").replace(":t", "$1")
        reference = {t: await p.conn.fetchval(sql, t, half_life_s) for t in waiting.tenants}
        rows = await p.conn.fetch(
            "SELECT tenant_id, hour, attempts, cpu_seconds, cpu_moment_s FROM usage_hours"
        )
    buckets = {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows}
    return waiting, now, reference, buckets


async def test_the_pass_decays_the_buckets_and_sums_the_day_by_the_hour(s: Sessions) -> None:
    tid = await _tenant(s)
    await _used(s, tid, [(0.1, 30.0), (0.5, 20.0), (1.5, 40.0), (5, 80.0), (23, 10.0), (30, 99.0)])
    await _queued(s, tid)
    waiting, now, reference, buckets = await _pass_view(s, 3600.0)
    load = waiting.tenants[tid]
    assert load.cpu_today_s == pytest.approx(180.0)  # not the attempt of 30 h ago
    expected = sum(
        decayed(
            cpu_s=cpu,
            moment_s=moment,
            age_s=(now - hour).total_seconds(),
            half_life_s=3600.0,
        )
        for (t, hour), (_, cpu, moment) in buckets.items()
        if t == tid and now - hour < timedelta(days=1, hours=1)
    )
    assert load.usage_s == pytest.approx(expected, rel=1e-9)
    # within an hour's spread of the per-attempt sum it replaces (shared.jobs.usage)
    assert reference[tid] / 1.061 <= load.usage_s <= reference[tid] * (1 + 1e-9)


async def test_fair_share_sees_the_tenants_in_the_order_the_per_attempt_sum_did(
    s: Sessions,
) -> None:
    histories: dict[str, list[tuple[float, float]]] = {
        "recent": [(10 / 60, 100.0)],
        "spread": [(20 / 60, 50.0), (50 / 60, 50.0)],
        "older": [(3, 300.0)],
        "long_ago": [(20, 1000.0)],
        "none": [],
    }
    tenants = {}
    for name, used in histories.items():
        tenants[name] = await _tenant(s)
        await _used(s, tenants[name], used)
        await _queued(s, tenants[name])
    for half_life_s in (3600.0, 4 * 3600.0):
        waiting, _, reference, _ = await _pass_view(s, half_life_s)
        by_buckets = sorted(tenants, key=lambda n: waiting.tenants[tenants[n]].usage_s)
        by_attempts = sorted(tenants, key=lambda n: reference[tenants[n]])
        assert by_buckets == by_attempts
        assert by_buckets[0] == "none"
        assert waiting.tenants[tenants["none"]].usage_s == 0.0


async def test_cpu_today_counts_the_hour_that_began_24_h_before_the_current_one(
    s: Sessions,
) -> None:
    tid = await _tenant(s)
    now = datetime(2026, 3, 10, 14, 20, tzinfo=UTC)
    ends = {
        datetime(2026, 3, 9, 13, 59, tzinfo=UTC): 1.0,  # 24 h 21 min before, the hour before
        datetime(2026, 3, 9, 14, 5, tzinfo=UTC): 2.0,  # 24 h 15 min before, the first hour
        datetime(2026, 3, 10, 14, 10, tzinfo=UTC): 4.0,  # this hour
    }
    ids = await _finished_jobs(s, tid, len(ends))
    async with s() as session, session.begin():
        for job_id, (at, cpu) in zip(ids, ends.items(), strict=True):
            row = cpu_used(job_id, tid, cpu)
            row.finished_at = at
            session.add(row)
    async with s() as session:
        used = await runnable.cpu_today(session=session, tenant_ids=[tid], now=now)
        later = await runnable.cpu_today(
            session=session, tenant_ids=[tid], now=now + timedelta(minutes=40)
        )
    assert used == {tid: 6.0}
    assert later == {tid: 4.0}  # 15:00: the hour of 14:05 yesterday has left the day


def _alembic(db: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env={**os.environ, "STRATUS_POSTGRES__DATABASE": db},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_the_migration_fills_the_buckets_from_the_attempts_already_there(
    settings: CommonSettings,
) -> None:
    async with own_database(settings, "sched_usage_backfill") as (name, sessions):
        tid = await _tenant(sessions)
        # the attempts are written with today's models, then the schema goes back to before
        # the buckets (their table dropped, the attempts kept) and forward again
        await _used(sessions, tid, [(0.2, 1.0), (0.3, 2.0), (7, 4.0), (40, 8.0)])
        _alembic(name, "downgrade", "0013")
        _alembic(name, "upgrade", "head")
        buckets = await assert_buckets_sum_the_attempts(sessions)
        assert sum(n for n, _, _ in buckets.values()) == 4
        assert sum(cpu for _, cpu, _ in buckets.values()) == pytest.approx(15.0)
