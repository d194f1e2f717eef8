"""Stage-out (``services.worker.stageout``) and its publish in ``record_attempt``, on a
database of its own, directory tiers in a temporary folder and ``s3`` on moto: a job's
outputs land verified on the tier it names, become visible only with the SUCCEEDED record,
and an output altered on its way, or an attempt superseded, publishes nothing."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.worker import service
from services.worker.datasets import AttemptFiles
from services.worker.service import Recorded
from services.worker.stageout import StagedOutput, StageOutFailed, abort_staged, stage_out
from shared.db.models import Tenant
from shared.jobs.proposals import Lost, Report
from shared.jobs.states import JobState
from shared.jobs.store import Claim, set_job_state
from shared.settings import CommonSettings
from shared.storage.catalog import get_dataset
from shared.storage.checksum import format_checksum, new_hasher
from shared.storage.names import object_key
from shared.storage.registry import Storage
from shared.storage.tiers import TEMP_DIR, FileTier, Upload
from tests.datamover.harness import CHUNK, MotoServer, storage_settings
from tests.factories import admit_jobs, new_job, own_database

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture(scope="module")
async def db(settings: CommonSettings) -> AsyncIterator[Sessions]:
    async with own_database(settings, "stageout") as (_, sessions):
        yield sessions


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoServer]:
    with MotoServer.running() as server:
        yield server


@pytest.fixture
async def storage(tmp_path: Path, moto_s3: MotoServer) -> AsyncIterator[Storage]:
    s = Storage(storage_settings(tmp_path, moto_s3))
    yield s
    await s.close()


async def running_job(db: Sessions, tier: str) -> Claim:
    tid, jid = uuid.uuid4(), uuid.uuid4()
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"s{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
        await session.flush()
        session.add(new_job(tid, id=jid, outputs={"c": "out/c.bin"}, output_tier=tier))
    async with db() as session, session.begin():
        assert await admit_jobs(session=session, job_ids=[jid]) == 1
        claim = await service.claim(session=session, job_id=jid, worker="w1", lease_s=30)
    assert claim is not None
    assert claim.output_tier == tier
    return claim


def kernel_output(root: Path, claim: Claim, size: int) -> tuple[Path, str]:
    """A file as a kernel leaves it in the attempt's folder on ``local``; its checksum."""
    path = root / "local" / TEMP_DIR / "jobs" / f"{claim.job_id}-{claim.attempt}" / "0-c.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    hasher = new_hasher()
    hasher.update(data)
    return path, format_checksum(hasher)


async def stage(storage: Storage, claim: Claim, path: Path) -> dict[str, StagedOutput]:
    staged: dict[str, StagedOutput] = {}
    await stage_out(
        storage,
        tenant_id=claim.tenant_id,
        job_id=claim.job_id,
        attempt=claim.attempt,
        tier=claim.output_tier,
        names=claim.outputs,
        files={"c": path},
        staged=staged,
    )
    return staged


async def record(
    db: Sessions, storage: Storage, claim: Claim, path: Path, staged: dict[str, StagedOutput]
) -> Recorded:
    async with db() as session, session.begin():
        return await service.record_attempt(
            session=session,
            storage=storage,
            claim=claim,
            worker="w1",
            report=Report(JobState.SUCCEEDED, result={}),
            files=AttemptFiles(path.parent, {"c": path}),
            staged=staged,
        )


async def stored_checksum(storage: Storage, tier: str, key: str) -> str:
    reader = await storage.tier(tier).open_reader(key)
    hasher = new_hasher()
    try:
        while block := await reader.read(2**20):
            hasher.update(block)
    finally:
        await reader.close()
    return format_checksum(hasher)


@pytest.mark.parametrize("tier", ["archive", "s3"])
async def test_outputs_are_published_on_the_job_tier_with_the_success(
    db: Sessions, storage: Storage, tmp_path: Path, tier: str
) -> None:
    claim = await running_job(db, tier)
    path, checksum = kernel_output(tmp_path, claim, 2 * CHUNK + 12_345)  # three chunks
    key = object_key(claim.tenant_id, "out/c.bin")
    staged = await stage(storage, claim, path)
    assert staged["c"].checksum == checksum
    assert staged["c"].size == 2 * CHUNK + 12_345
    with pytest.raises(FileNotFoundError):  # nothing visible before the record
        await storage.tier(tier).size(key)

    recorded = await record(db, storage, claim, path, staged)
    await abort_staged(storage, staged)  # what the worker does after every record

    assert recorded.accepted
    assert await stored_checksum(storage, tier, key) == checksum
    assert not (tmp_path / "local" / key).exists()
    async with db() as session:
        row = await get_dataset(session=session, tenant_id=claim.tenant_id, name="out/c.bin")
        assert row is not None
        assert (row.tier, row.tiers, row.size, row.checksum) == (
            tier,
            [tier],
            2 * CHUNK + 12_345,
            checksum,
        )
    if tier == "archive":  # the partial object was renamed into place: no temporary file left
        assert list((tmp_path / "archive" / TEMP_DIR).iterdir()) == []
    else:
        assert await partial_uploads(storage, key) == []


async def partial_uploads(storage: Storage, key: str) -> list[Upload]:
    """The multipart uploads of ``key`` on ``s3`` neither completed nor aborted."""
    everything = await storage.tier("s3").partial_uploads(datetime.now(UTC) + timedelta(days=1))
    return [u for u in everything if u.key == key]


@pytest.mark.parametrize("tier", ["archive", "s3"])
async def test_a_record_retried_after_publishing_keeps_the_verified_object(
    db: Sessions, storage: Storage, tmp_path: Path, tier: str
) -> None:
    """The first try published, then its transaction did not commit: the second try finds
    the object already there, checks its bytes, and records the row."""
    claim = await running_job(db, tier)
    path, checksum = kernel_output(tmp_path, claim, CHUNK + 7)
    staged = await stage(storage, claim, path)
    async with db() as session:
        await session.begin()
        await service.record_attempt(
            session=session,
            storage=storage,
            claim=claim,
            worker="w1",
            report=Report(JobState.SUCCEEDED, result={}),
            files=AttemptFiles(path.parent, {"c": path}),
            staged=staged,
        )
        await session.rollback()  # the commit was lost
    recorded = await record(db, storage, claim, path, staged)
    assert recorded.accepted
    async with db() as session:
        row = await get_dataset(session=session, tenant_id=claim.tenant_id, name="out/c.bin")
        assert row is not None
        assert (row.tier, row.checksum) == (tier, checksum)


async def test_an_output_altered_on_its_way_is_refused(
    db: Sessions, storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = await running_job(db, "archive")
    path, _ = kernel_output(tmp_path, claim, CHUNK + 100)
    archive = storage.tier("archive")
    assert isinstance(archive, FileTier)
    write = archive.write

    async def flip_a_bit(upload: Upload, index: int, offset: int, data: bytes) -> str | None:
        if index == 1:
            data = bytes([data[0] ^ 1]) + data[1:]
        return await write(upload, index, offset, data)

    monkeypatch.setattr(archive, "write", flip_a_bit)
    staged: dict[str, StagedOutput] = {}
    with pytest.raises(StageOutFailed, match="does not match"):
        await stage_out(
            storage,
            tenant_id=claim.tenant_id,
            job_id=claim.job_id,
            attempt=claim.attempt,
            tier="archive",
            names=claim.outputs,
            files={"c": path},
            staged=staged,
        )
    assert set(staged) == {"c"}  # begun, so the worker aborts it
    await abort_staged(storage, staged)
    assert list((tmp_path / "archive" / TEMP_DIR).iterdir()) == []
    assert not (tmp_path / "archive" / object_key(claim.tenant_id, "out/c.bin")).exists()


async def test_a_superseded_attempt_publishes_nothing_on_the_tier(
    db: Sessions, storage: Storage, tmp_path: Path
) -> None:
    stale = await running_job(db, "s3")
    path, _ = kernel_output(tmp_path, stale, 1000)
    staged = await stage(storage, stale, path)
    async with db() as session, session.begin():  # reaped and run again elsewhere
        await set_job_state(session, stale.job_id, Lost(stale.attempt))
        assert await service.claim(session=session, job_id=stale.job_id, worker="w2", lease_s=30)
    recorded = await record(db, storage, stale, path, staged)
    await abort_staged(storage, staged)
    assert not recorded.accepted
    with pytest.raises(FileNotFoundError):
        await storage.tier("s3").size(object_key(stale.tenant_id, "out/c.bin"))
    assert staged["c"].upload.upload_id is not None
    assert await partial_uploads(storage, object_key(stale.tenant_id, "out/c.bin")) == []
