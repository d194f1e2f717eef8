"""SIGTERM to a real datamover process in the middle of a migration: it stops at a chunk
boundary with its progress recorded, releases the lease and exits; a second datamover
resumes the migration at once (not after the lease) from the recorded chunks."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import httpx
import xxhash
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Migration
from shared.settings import StorageSettings
from tests.datamover.harness import CHUNK, datamover_env, new_tenant, payload, put, wait_migration
from tests.datamover.test_resume import poll
from tests.processes import service_process

LEASE_S = 120  # far longer than the test: only a released lease lets the second one start
# Migrations in flight at SIGTERM get this long to reach a chunk boundary, then are cancelled
GRACE_S = 20


async def test_sigterm_checkpoints_releases_the_lease_and_another_datamover_resumes(
    api: httpx.AsyncClient,
    storage: StorageSettings,
    sessions: async_sessionmaker[AsyncSession],
    test_env: dict[str, str],
    tmp_path: Path,
) -> None:
    t = await new_tenant(api)
    data = payload(12 * CHUNK + 777, seed=11)  # 13 chunks, ~60 MiB
    total = len(data)
    await put(api, t, "shutdown/big.bin", data)
    common = {
        "STRATUS_THROTTLE_BYTES_PER_S": str(12 * 2**20),
        "STRATUS_IN_FLIGHT": "2",
        "STRATUS_LEASE_S": str(LEASE_S),
        "STRATUS_SHUTDOWN_GRACE_S": str(GRACE_S),
    }
    first_env = datamover_env(test_env, storage, STRATUS_NAME=f"dm-a-{t.id[:8]}", **common)
    second_env = datamover_env(test_env, storage, STRATUS_NAME=f"dm-b-{t.id[:8]}", **common)
    log = tmp_path / "datamover.log"
    with service_process("services.datamover", first_env, log) as first:
        r = await api.post(
            "/v1/migrations",
            json={"dataset": "shutdown/big.bin", "to_tier": "archive", "mode": "copy"},
            headers=t.headers,
        )
        assert r.status_code == 202, r.text
        mid = r.json()["id"]
        deadline = time.monotonic() + 90
        while True:
            m = await poll(api, t.headers, mid)
            assert m["state"] in ("PENDING", "RUNNING"), m
            if m["bytes_done"] >= total * 0.3:
                break
            assert time.monotonic() < deadline, (m, log.read_text()[-3000:])
            await asyncio.sleep(0.05)
        stopped_at = time.monotonic()
        first.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(first.wait, GRACE_S + 10)
        stop_s = time.monotonic() - stopped_at
    first_log = log.read_text()
    # uvicorn re-raises the signal once the lifespan has shut down cleanly
    assert rc in (0, -signal.SIGTERM), first_log[-3000:]
    assert stop_s < GRACE_S, stop_s  # stopped at a chunk boundary, not cut at the grace's end
    assert "migration_checkpointed" in first_log
    assert "datamover_stopped" in first_log

    paused = await poll(api, t.headers, mid)
    assert paused["state"] == "RUNNING"  # not failed: paused, for someone else to resume
    done_at_stop = paused["bytes_done"]
    assert total * 0.3 <= done_at_stop < total
    async with sessions() as session:
        expired = await session.scalar(
            select(Migration.lease_expires_at < func.now()).where(Migration.id == uuid.UUID(mid))
        )
    assert expired, "the lease was not released"

    resumed_at = time.monotonic()
    with service_process("services.datamover", second_env, log):
        done = await wait_migration(api, t, mid, timeout=60)
    took = time.monotonic() - resumed_at
    assert done["state"] == "SUCCEEDED", (done, log.read_text()[-3000:])
    assert took < LEASE_S / 2, took  # it did not wait for the lease to run out
    assert done["attempts"] == 2
    assert done["bytes_copied"] - paused["bytes_copied"] == total - done_at_stop
    assert done["checksum"] == "xxh3-128:" + xxhash.xxh3_128(data).hexdigest()
    copy = Path(storage.archive.root) / t.id / "shutdown/big.bin"
    assert copy.read_bytes() == data
