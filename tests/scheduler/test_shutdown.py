"""SIGTERM to a real scheduler process in the middle of a dispatch pass: the pass commits
(the job is admitted and dispatched, its event published), then the process exits."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Job, Outbox, Tenant, Worker
from shared.settings import CommonSettings
from tests.datamover.harness import free_port
from tests.factories import new_job, own_database
from tests.processes import service_process
from tools.supervision import http_status


@pytest.fixture(scope="module")
async def own(
    settings: CommonSettings,
) -> AsyncIterator[tuple[str, async_sessionmaker[AsyncSession]]]:
    async with own_database(settings, "sd", vhost=True) as own:
        yield own


async def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while await asyncio.to_thread(http_status, port, "/readyz") != 200:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        await asyncio.sleep(0.2)


async def test_sigterm_lets_the_dispatch_pass_in_progress_commit(
    own: tuple[str, async_sessionmaker[AsyncSession]],
    test_env: dict[str, str],
    tmp_path: Path,
) -> None:
    name, db = own
    tid = uuid.uuid4()
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"t{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
        session.add(Worker(id=f"w-{tid.hex[:8]}", device="cpu", concurrency=4))
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STRATUS_")},
        **test_env,
        "STRATUS_POSTGRES__DATABASE": name,
        "STRATUS_RABBIT__VHOST": name,
        "STRATUS_PORT": str(port),
        "STRATUS_LOG_LEVEL": "INFO",
        "STRATUS_DISPATCH_INTERVAL_S": "0.2",
        "STRATUS_REAPER_ENABLED": "false",
        "STRATUS_WORKER_TTL_S": "600",
        "STRATUS_SHUTDOWN_GRACE_S": "30",
    }
    log = tmp_path / "scheduler.log"
    with service_process("services.scheduler", env, log) as proc:
        await _wait_ready(port, proc, log)
        # Hold the job history table: the next pass admits the job (UPDATE), then waits
        # on this lock to append its history, in the middle of its transaction.
        async with db() as blocker:
            await blocker.execute(text("LOCK TABLE job_events IN SHARE MODE"))
            async with db() as session, session.begin():
                job = new_job(tid)
                job_id = job.id
                session.add(job)
            await _wait_for_blocked_scheduler(blocker, name)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.5)
            assert proc.poll() is None, "the scheduler exited without finishing its pass"
            await blocker.rollback()  # the pass goes on
        rc = await asyncio.to_thread(proc.wait, 30)
    text_log = log.read_text()
    # uvicorn re-raises the signal once the lifespan has shut down cleanly
    assert rc in (0, -signal.SIGTERM), text_log[-3000:]
    assert "scheduler_stopped" in text_log
    async with db() as session:
        row = await session.get(Job, job_id)
        assert row is not None
        assert row.state == "QUEUED", (row.state, row.state_reason)
        assert row.dispatched_at is not None
        # the dispatch event was published before the process exited
        assert await session.scalar(select(func.count()).select_from(Outbox)) == 0


async def _wait_for_blocked_scheduler(session: AsyncSession, database: str) -> None:
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = :db "
        "AND application_name = 'stratus-scheduler' AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + 30
    while not await session.scalar(query, {"db": database}):
        assert time.monotonic() < deadline, "the scheduler never reached the lock"
        await asyncio.sleep(0.1)
