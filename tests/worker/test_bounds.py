"""What a job may use and leave behind is bounded, through the whole attempt (a warm pool
process, the record on a database of its own, directory tiers in a temporary folder): a job
over its memory limit ends FAILED with the reason, not retried; a result above the
inline cap becomes the dataset ``results/<job id>.json`` and the job's row holds a small
pointer to it; outputs (and such a result) that would take the tenant over its
``storage_bytes`` quota fail the job with a reason naming the quota and leave nothing: no
dataset row, no file, no partial object on any tier; and jobs publishing at once never take
a tenant over it together."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import orjson
import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.worker import service
from services.worker.app import WorkerRuntime
from services.worker.datasets import AttemptFiles, attempt_folder
from services.worker.runner import KernelRunner, PoolConfig
from services.worker.settings import WorkerSettings
from shared.db.models import Dataset, Job, Tenant
from shared.errors import QuotaExceeded
from shared.jobs.proposals import Report
from shared.jobs.states import JobState
from shared.jobs.store import Claim
from shared.runtime import Resources
from shared.settings import CommonSettings, StorageSettings
from shared.storage.checksum import checksum_of
from shared.storage.tiers import TEMP_DIR
from tests.factories import admit_jobs, new_job, own_database
from tests.worker.conftest import CACHE

Sessions = async_sessionmaker[AsyncSession]
INLINE_MAX = 1024
MEMORY_MB = 256


@pytest.fixture(scope="module")
async def db(settings: CommonSettings) -> AsyncIterator[Sessions]:
    async with own_database(settings, "bounds") as (_, sessions):
        yield sessions


@pytest_asyncio.fixture(scope="module")
async def pool(plugin_path: str) -> AsyncIterator[KernelRunner]:
    """One pool process whose jobs may allocate ``MEMORY_MB`` MiB and whose results above
    ``INLINE_MAX`` bytes come back as files; it knows the fault kernels too."""
    config = PoolConfig(
        processes=1,
        cache_dir=CACHE,
        memory_limit_bytes=MEMORY_MB * 2**20,
        result_inline_max_bytes=INLINE_MAX,
        extra_env={"PYTHONPATH": plugin_path},
    )
    runner = KernelRunner(config)
    await runner.start()
    yield runner
    await runner.close()


def runtime(db: Sessions, pool: KernelRunner, root: Path) -> WorkerRuntime:
    storage = StorageSettings.model_validate(
        {
            "local": {"root": str(root / "local")},
            "archive": {"root": str(root / "archive")},
            "fsync": False,
        }
    )
    settings = WorkerSettings(name="w1", storage=storage, concurrency=1, lease_s=30)
    res = SimpleNamespace(
        engine=db.kw["bind"], sessions=db, relay=SimpleNamespace(wake=lambda: None)
    )
    return WorkerRuntime(cast(Resources, res), settings, pool)


async def tenant(db: Sessions, root: Path, left: int | None, **inputs: Any) -> uuid.UUID:
    """A tenant whose ``inputs`` (name -> array) are datasets of its own on ``local``, with
    ``left`` bytes of its ``storage_bytes`` quota free (None: the platform default)."""
    tid = uuid.uuid4()
    sizes = {}
    for name, arr in inputs.items():
        path = root / "local" / str(tid) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, arr)
        sizes[name] = path.stat().st_size
    quotas = {} if left is None else {"storage_bytes": sum(sizes.values()) + left}
    async with db() as session, session.begin():
        session.add(
            Tenant(id=tid, name=f"b{tid.hex[:8]}", weight=1, quotas=quotas, suspended=False)
        )
        await session.flush()
        session.add_all(
            Dataset(
                id=uuid.uuid4(),
                tenant_id=tid,
                name=name,
                size=size,
                checksum="",
                tier="local",
                tiers=["local"],
            )
            for name, size in sizes.items()
        )
    return tid


async def run(db: Sessions, rt: WorkerRuntime, tid: uuid.UUID, **job: Any) -> Job:
    """Submit, admit, claim, run and record one job; its row afterwards."""
    jid = uuid.uuid4()
    async with db() as session, session.begin():
        session.add(new_job(tid, id=jid, **job))
    async with db() as session, session.begin():
        assert await admit_jobs(session=session, job_ids=[jid]) == 1
        claim = await service.claim(session=session, job_id=jid, worker="w1", lease_s=30)
    assert isinstance(claim, Claim)
    await rt.slots.acquire()  # as ``on_dispatch`` does; ``_run`` gives it back
    await rt._run(claim)
    async with db() as session:
        found = await session.get(Job, jid)
    assert found is not None
    return found


async def datasets(db: Sessions, tid: uuid.UUID) -> dict[str, int]:
    async with db() as session:
        rows = await session.execute(
            select(Dataset.name, Dataset.size).where(Dataset.tenant_id == tid)
        )
        return {row.name: row.size for row in rows}


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


async def test_a_result_over_the_cap_is_a_dataset_the_job_names(
    db: Sessions, pool: KernelRunner, tmp_path: Path
) -> None:
    data = np.random.default_rng(1).random(10_000)
    tid = await tenant(db, tmp_path, None, **{"d.npy": data})
    rt = runtime(db, pool, tmp_path)
    params = {"bins": 2000, "range": [0.0, 1.0]}
    job = await run(db, rt, tid, kernel="histogram", params=params, inputs={"data": "d.npy"})
    name = f"results/{job.id}.json"
    stored = tmp_path / "local" / str(tid) / name
    body = stored.read_bytes()
    assert job.state == "SUCCEEDED", job.error
    assert job.result == {"dataset": name, "size": len(body), "checksum": checksum_of(body)}
    assert len(orjson.dumps(job.result)) < INLINE_MAX  # what a list of jobs embeds
    assert orjson.loads(body) == {"counts": np.histogram(data, 2000, (0.0, 1.0))[0].tolist()}
    assert await datasets(db, tid) == {"d.npy": 128 + 8 * 10_000, name: len(body)}
    assert not attempt_folder(rt.settings.storage, job.id, 1).exists()

    small = await run(
        db,
        rt,
        tid,
        kernel="histogram",
        params={"bins": 3, "range": [0.0, 1.0]},
        inputs={"data": "d.npy"},
    )
    assert small.result == {"counts": np.histogram(data, 3, (0.0, 1.0))[0].tolist()}
    assert set(await datasets(db, tid)) == {"d.npy", name}


SAXPY_OUTPUT = 128 + 2000 * 8  # the .npy of 2,000 float64


@pytest.mark.parametrize("tier", ["local", "archive"])
async def test_outputs_over_the_storage_quota_fail_the_job_and_leave_nothing(
    db: Sessions, pool: KernelRunner, tmp_path: Path, tier: str
) -> None:
    left = SAXPY_OUTPUT - 1
    arrays = {"x.npy": np.ones(2000), "y.npy": np.ones(2000)}
    tid = await tenant(db, tmp_path, left, **arrays)
    rt = runtime(db, pool, tmp_path)
    job = await run(
        db,
        rt,
        tid,
        kernel="saxpy",
        params={"a": 2.0},
        inputs={"x": "x.npy", "y": "y.npy"},
        outputs={"y": "out/y.npy"},
        output_tier=tier,
    )
    assert (job.state, job.result) == ("FAILED", None)
    assert job.error == (
        f"storage_bytes quota exceeded: outputs need {SAXPY_OUTPUT} bytes, {left} left"
    )
    assert set(await datasets(db, tid)) == set(arrays)
    assert not (tmp_path / "local" / str(tid) / "out").exists()
    assert files_under(tmp_path / "archive") == []  # no object, no partial object
    assert files_under(tmp_path / "local" / TEMP_DIR) == []


async def test_outputs_that_fit_the_quota_exactly_are_published(
    db: Sessions, pool: KernelRunner, tmp_path: Path
) -> None:
    """Overwriting a dataset frees its bytes first: the same output twice fits a quota of
    one output."""
    arrays = {"x.npy": np.ones(2000), "y.npy": np.ones(2000)}
    tid = await tenant(db, tmp_path, SAXPY_OUTPUT, **arrays)
    rt = runtime(db, pool, tmp_path)
    saxpy: dict[str, Any] = {
        "kernel": "saxpy",
        "params": {"a": 2.0},
        "inputs": {"x": "x.npy", "y": "y.npy"},
        "outputs": {"y": "out/y.npy"},
    }
    for _ in range(2):
        job = await run(db, rt, tid, **saxpy)
        assert job.state == "SUCCEEDED", job.error
    assert (await datasets(db, tid))["out/y.npy"] == SAXPY_OUTPUT
    other = await run(db, rt, tid, **{**saxpy, "outputs": {"y": "out/z.npy"}})
    assert other.error == (
        f"storage_bytes quota exceeded: outputs need {SAXPY_OUTPUT} bytes, 0 left"
    )


async def test_a_large_result_counts_against_the_quota(
    db: Sessions, pool: KernelRunner, tmp_path: Path
) -> None:
    tid = await tenant(db, tmp_path, 2000, **{"d.npy": np.ones(10)})
    rt = runtime(db, pool, tmp_path)
    params = {"bins": 2000, "range": [0.0, 1.0]}
    job = await run(db, rt, tid, kernel="histogram", params=params, inputs={"data": "d.npy"})
    assert job.state == "FAILED"
    assert job.error is not None
    assert job.error.startswith("storage_bytes quota exceeded: outputs need ")
    assert job.error.endswith(" bytes, 2000 left")
    assert list(await datasets(db, tid)) == ["d.npy"]
    assert not (tmp_path / "local" / str(tid) / "results").exists()
    assert not attempt_folder(rt.settings.storage, job.id, 1).exists()


async def test_concurrent_publishes_never_exceed_the_quota(
    db: Sessions, pool: KernelRunner, tmp_path: Path
) -> None:
    """Twenty jobs record at once, each with a 1,000-byte output, under room for three."""
    tid = await tenant(db, tmp_path, 3 * 1000 + 999)
    rt = runtime(db, pool, tmp_path)
    claims = []
    for i in range(20):
        jid = uuid.uuid4()
        async with db() as session, session.begin():
            session.add(new_job(tid, id=jid, outputs={"c": f"out/{i}.bin"}))
        async with db() as session, session.begin():
            assert await admit_jobs(session=session, job_ids=[jid]) == 1
            claim = await service.claim(session=session, job_id=jid, worker="w1", lease_s=30)
        assert claim is not None
        path = attempt_folder(rt.settings.storage, jid, 1) / "0-c.npy"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x" * 1000)
        claims.append((claim, path))

    async def publish(claim: Claim, path: Path) -> bool:
        try:
            async with db() as session, session.begin():
                await service.record_attempt(
                    session=session,
                    storage=rt.storage,
                    claim=claim,
                    worker="w1",
                    report=Report(JobState.SUCCEEDED, result={}),
                    files=AttemptFiles(path.parent, {"c": path}),
                )
        except QuotaExceeded:
            return False
        return True

    published = await asyncio.gather(*(publish(c, p) for c, p in claims))
    assert sum(published) == 3
    stored = await datasets(db, tid)
    assert sorted(stored.values()) == [1000] * 3
    assert len(files_under(tmp_path / "local" / str(tid) / "out")) == 3


async def test_a_job_over_its_memory_limit_ends_failed_and_is_not_retried(
    db: Sessions, pool: KernelRunner, tmp_path: Path
) -> None:
    tid = await tenant(db, tmp_path, None)
    rt = runtime(db, pool, tmp_path)
    job = await run(db, rt, tid, kernel="hog", params={"megabytes": 2 * MEMORY_MB}, max_retries=3)
    assert (job.state, job.attempts) == ("FAILED", 1)
    assert job.error == f"memory limit exceeded: the job needed more than {MEMORY_MB} MiB"
    await pool.wait_idle()
    fits = await run(db, rt, tid, kernel="hog", params={"megabytes": MEMORY_MB // 4})
    assert fits.state == "SUCCEEDED", fits.error
