"""Recording an attempt (``services.worker.service.record``) on a database of its own: the
usage row holds the attempt's CPU seconds, also for an attempt stopped by the user's cancel,
and a superseded attempt records nothing."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.worker import service
from services.worker.datasets import AttemptFiles, attempt_files
from shared.db.models import JobAttempt, Tenant
from shared.jobs.proposals import Cancelled, Lost, Report
from shared.jobs.states import JobState
from shared.jobs.store import Claim, set_job_state
from shared.settings import CommonSettings, StorageSettings
from shared.storage.catalog import get_dataset
from shared.storage.registry import Storage
from tests.factories import admit_jobs, new_job, own_database

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture(scope="module")
async def db(settings: CommonSettings) -> AsyncIterator[Sessions]:
    async with own_database(settings, "worker") as (_, sessions):
        yield sessions


async def running_job(db: Sessions) -> Claim:
    tid, jid = uuid.uuid4(), uuid.uuid4()
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"w{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
        await session.flush()
        session.add(new_job(tid, id=jid))
    async with db() as session, session.begin():
        assert await admit_jobs(session=session, job_ids=[jid]) == 1
        claim = await service.claim(session=session, job_id=jid, worker="w1", lease_s=30)
    assert claim is not None
    return claim


async def record(db: Sessions, claim: Claim, report: Report) -> tuple[bool, list[JobAttempt]]:
    async with db() as session, session.begin():
        accepted = await service.record(session=session, claim=claim, worker="w1", report=report)
    async with db() as session:
        rows = await session.scalars(select(JobAttempt).where(JobAttempt.job_id == claim.job_id))
        return accepted, list(rows)


async def test_a_finished_attempt_records_its_cpu_seconds(db: Sessions) -> None:
    claim = await running_job(db)
    report = Report(JobState.SUCCEEDED, result={"x": 1}, cpu_seconds=2.5, wall_seconds=1.5)
    accepted, rows = await record(db, claim, report)
    assert accepted
    assert [(r.attempt, r.outcome, r.cpu_seconds) for r in rows] == [(1, "SUCCEEDED", 2.5)]


async def test_an_attempt_the_user_cancelled_still_records_its_usage(db: Sessions) -> None:
    claim = await running_job(db)
    async with db() as session, session.begin():  # the gateway's cancel
        assert (await set_job_state(session, claim.job_id, Cancelled())).accepted
    report = Report(JobState.CANCELLED, error="cancelled while running", cpu_seconds=3.25)
    accepted, rows = await record(db, claim, report)
    assert not accepted  # the job was already CANCELLED
    assert [(r.outcome, r.cpu_seconds) for r in rows] == [("CANCELLED", 3.25)]
    _, again = await record(db, claim, report)  # a duplicate counts once
    assert len(again) == 1


async def test_a_superseded_attempt_records_nothing(db: Sessions) -> None:
    stale = await running_job(db)
    async with db() as session, session.begin():  # reaped, run again elsewhere, cancelled
        await set_job_state(session, stale.job_id, Lost(stale.attempt))
        second = await service.claim(session=session, job_id=stale.job_id, worker="w2", lease_s=30)
        assert second is not None
        assert second.attempt == stale.attempt + 1
        await set_job_state(session, stale.job_id, Cancelled())
    accepted, rows = await record(db, stale, Report(JobState.CANCELLED, cpu_seconds=1.0))
    assert not accepted
    assert rows == []


def _storage(tmp_path: Path) -> Storage:
    return Storage(
        StorageSettings.model_validate(
            {
                "local": {"root": str(tmp_path / "local")},
                "archive": {"root": str(tmp_path / "archive")},
                "fsync": False,
            }
        )
    )


def _output(storage: Storage, claim: Claim, value: float) -> AttemptFiles:
    """The attempt's files, its output ``c`` written as the kernel would."""
    files = attempt_files(storage.settings, claim)
    files.folder.mkdir(parents=True, exist_ok=True)
    np.save(files.outputs["c"], np.full(3, value))
    return files


async def test_a_succeeded_attempt_publishes_its_outputs_in_the_same_transaction(
    db: Sessions, tmp_path: Path
) -> None:
    storage = _storage(tmp_path)
    claim = dataclasses.replace(await running_job(db), outputs={"c": "out/c.npy"})
    files = _output(storage, claim, 2.0)
    async with db() as session, session.begin():
        recorded = await service.record_attempt(
            session=session,
            storage=storage,
            claim=claim,
            worker="w1",
            report=Report(JobState.SUCCEEDED, result={}),
            files=files,
        )
    assert recorded.accepted
    assert recorded.stale == {"out/c.npy": ()}
    final = tmp_path / "local" / str(claim.tenant_id) / "out" / "c.npy"
    np.testing.assert_array_equal(np.load(final), np.full(3, 2.0))
    assert not files.outputs["c"].exists()
    async with db() as session:
        row = await get_dataset(session=session, tenant_id=claim.tenant_id, name="out/c.npy")
    assert row is not None
    assert (row.tier, row.tiers, row.size) == ("local", ["local"], final.stat().st_size)


async def test_a_superseded_attempt_publishes_nothing(db: Sessions, tmp_path: Path) -> None:
    storage = _storage(tmp_path)
    stale = dataclasses.replace(await running_job(db), outputs={"c": "out/c.npy"})
    async with db() as session, session.begin():  # reaped and run again elsewhere
        await set_job_state(session, stale.job_id, Lost(stale.attempt))
        assert await service.claim(session=session, job_id=stale.job_id, worker="w2", lease_s=30)
    files = _output(storage, stale, 1.0)
    async with db() as session, session.begin():
        recorded = await service.record_attempt(
            session=session,
            storage=storage,
            claim=stale,
            worker="w1",
            report=Report(JobState.SUCCEEDED, result={}),
            files=files,
        )
    assert not recorded.accepted
    assert not (tmp_path / "local" / str(stale.tenant_id) / "out" / "c.npy").exists()
    async with db() as session:
        assert (
            await get_dataset(session=session, tenant_id=stale.tenant_id, name="out/c.npy") is None
        )
