"""The datamover's sweep removes the checkpoints of jobs that are final or gone, and keeps
those of jobs that may still resume (and any folder written within the last ``after_s``)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.datamover.sweep import sweep_checkpoints
from shared.db.models import Tenant
from shared.settings import CommonSettings, StorageSettings
from shared.storage import Storage
from shared.storage.checkpoints import DIR_NAME, folder_for
from tests.factories import new_job, own_database

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture(scope="module")
async def db(settings: CommonSettings) -> AsyncIterator[Sessions]:
    async with own_database(settings, "cksweep") as (_, sessions):
        yield sessions


async def test_final_and_unknown_jobs_lose_their_checkpoints(db: Sessions, tmp_path: Path) -> None:
    tid = uuid.uuid4()
    states = {"QUEUED": uuid.uuid4(), "RUNNING": uuid.uuid4(), "SUCCEEDED": uuid.uuid4()}
    states["CANCELLED"] = uuid.uuid4()
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"s{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
        await session.flush()
        for state, job_id in states.items():
            session.add(new_job(tid, id=job_id, state=state, kernel="stencil2d"))
    root = tmp_path / "local"
    storage = Storage(StorageSettings.model_validate({"local": {"root": str(root)}}))
    unknown, fresh = uuid.uuid4(), uuid.uuid4()
    old = time.time() - 3600
    for job_id in [*states.values(), unknown, fresh]:
        folder = folder_for(root, job_id)
        folder.mkdir(parents=True)
        (folder / "checkpoint.bin").write_bytes(b"x")
        if job_id != fresh:
            os.utime(folder, (old, old))
    (root / DIR_NAME / "not-a-job").mkdir()
    try:
        removed = await sweep_checkpoints(sessions=db, storage=storage, after_s=60)
    finally:
        await storage.close()
    left = {p.name for p in (root / DIR_NAME).iterdir()}
    assert removed == 3  # SUCCEEDED, CANCELLED, unknown
    assert left == {str(states["QUEUED"]), str(states["RUNNING"]), str(fresh), "not-a-job"}
