"""Sweeping abandoned partial objects against moto_server: multipart uploads under the tier's
prefix that no live migration owns and that are older than the setting are aborted; others
(owned, young, outside the prefix, not shaped as ours) are left alone. Temporary files on
directory tiers follow the same rule."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.datamover.sweep import sweep
from shared.db.models import Migration
from shared.events import utcnow
from shared.settings import StorageSettings
from shared.storage import Storage
from shared.storage.tiers import TEMP_DIR
from tests.datamover.harness import (
    BUCKET,
    CHUNK,
    MotoServer,
    new_tenant,
    payload,
    put,
    running_datamover,
    storage_settings,
    wait_migration,
)


def with_prefix(settings: StorageSettings, prefix: str) -> StorageSettings:
    return settings.model_copy(update={"s3": settings.s3.model_copy(update={"prefix": prefix})})


def begin_upload(moto: MotoServer, key: str) -> str:
    """A multipart upload with one part, never completed (a writer that died)."""
    client = moto.client()
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    upload_id: str = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=1, Body=b"p" * 99)
    return upload_id


def open_uploads(moto: MotoServer) -> set[str]:
    listed: dict[str, Any] = moto.client().list_multipart_uploads(Bucket=BUCKET)
    return {u["UploadId"] for u in listed.get("Uploads", [])}


def abort(moto: MotoServer, key: str, upload_id: str) -> None:
    moto.client().abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id)


async def test_sweep_aborts_only_abandoned_uploads_older_than_the_setting(
    api: httpx.AsyncClient,
    moto: MotoServer,
    tmp_path: Path,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    prefix = f"sweep-{uuid.uuid4().hex[:8]}"
    storage = Storage(with_prefix(storage_settings(tmp_path, moto), prefix))
    t = await new_tenant(api)
    ours = f"{prefix}/{t.id}"
    abandoned = begin_upload(moto, f"{ours}/lost.bin")
    owned = begin_upload(moto, f"{ours}/moving.bin")
    outside = begin_upload(moto, f"{t.id}/{prefix}-outside.bin")  # not under the prefix
    foreign = begin_upload(moto, f"{prefix}/not-a-tenant/x.bin")  # under it, not our shape
    async with sessions() as session, session.begin():
        session.add(
            Migration(
                id=uuid.uuid4(),
                tenant_id=uuid.UUID(t.id),
                dataset="moving.bin",
                from_tier="local",
                to_tier="s3",
                mode="copy",
                state="RUNNING",
                upload={"key": f"{t.id}/moving.bin", "temp": "", "upload_id": owned},
                owner="another-datamover",
                lease_expires_at=utcnow(),
            )
        )
    temps = tmp_path / "archive" / TEMP_DIR
    temps.mkdir(parents=True)
    (temps / "stale").write_bytes(b"s")
    (temps / "fresh").write_bytes(b"f")
    two_hours_ago = time.time() - 7200
    os.utime(temps / "stale", (two_hours_ago, two_hours_ago))
    try:
        # An hour: only the temporary file untouched for two hours is old enough.
        assert await sweep(sessions=sessions, storage=storage, after_s=3600) == 1
        assert sorted(p.name for p in temps.iterdir()) == ["fresh"]
        assert {abandoned, owned, outside, foreign} <= open_uploads(moto)

        # Any age: what no live migration owns goes, under the prefix and of our shape only.
        assert await sweep(sessions=sessions, storage=storage, after_s=0) == 2
        left = open_uploads(moto)
        assert abandoned not in left
        assert {owned, outside, foreign} <= left
        assert list(temps.iterdir()) == []
        assert await sweep(sessions=sessions, storage=storage, after_s=0) == 0
    finally:
        for key, upload_id in (
            (f"{ours}/moving.bin", owned),
            (f"{t.id}/{prefix}-outside.bin", outside),
            (f"{prefix}/not-a-tenant/x.bin", foreign),
        ):
            abort(moto, key, upload_id)
        await storage.close()


async def test_the_datamover_sweeps_by_itself_and_spares_a_running_migration(
    api: httpx.AsyncClient, storage: StorageSettings, moto: MotoServer
) -> None:
    prefix = f"sweep-{uuid.uuid4().hex[:8]}"
    tiers = with_prefix(storage, prefix)
    t = await new_tenant(api)
    lost = begin_upload(moto, f"{prefix}/{t.id}/lost.bin")
    data = payload(6 * CHUNK, seed=21)
    await put(api, t, "slow.bin", data)
    r = await api.post(
        "/v1/migrations",
        json={"dataset": "slow.bin", "to_tier": "s3", "mode": "copy"},
        headers=t.headers,
    )
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    slow = {"throttle_bytes_per_s": 6 * 2**20, "in_flight": 2, "sweep_enabled": False}
    async with running_datamover(tiers, **slow):  # about 5 s
        running = await wait_migration(api, t, mid, ("RUNNING",))
        deadline = time.monotonic() + 20
        while running["bytes_done"] < CHUNK:  # its upload is begun and recorded
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
            running = await wait_migration(api, t, mid, ("RUNNING", "SUCCEEDED"))
        assert running["state"] == "RUNNING", running
        # A second datamover sweeps every 0.2 s, any age: only ownership spares an upload.
        async with running_datamover(tiers, sweep_interval_s=0.2, sweep_after_s=0):
            deadline = time.monotonic() + 20
            while lost in open_uploads(moto):
                assert time.monotonic() < deadline, "the abandoned upload was not swept"
                await asyncio.sleep(0.1)
            done = await wait_migration(api, t, mid, timeout=60)
    assert done["state"] == "SUCCEEDED", done  # its own upload was never aborted
    body = moto.client().get_object(Bucket=BUCKET, Key=f"{prefix}/{t.id}/slow.bin")["Body"]
    assert body.read() == data
