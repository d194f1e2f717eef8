"""Migrations end to end: the gateway records them, the datamover (in-process here, a real
subprocess in ``test_resume``) copies between a directory, another directory and moto_server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import xxhash

from shared.settings import StorageSettings
from shared.storage.tiers import TEMP_DIR, FileTier, Upload
from tests.datamover.harness import (
    BUCKET,
    CHUNK,
    MotoServer,
    Tenant,
    new_tenant,
    payload,
    put,
    running_datamover,
    storage_settings,
    wait_migration,
)


def xxh(data: bytes) -> str:
    return "xxh3-128:" + xxhash.xxh3_128(data).hexdigest()


def tier_file(storage: StorageSettings, tier: str, tenant: Tenant, name: str) -> Path:
    return Path(storage.tiers()[tier].root) / tenant.id / name


def s3_object(moto: MotoServer, tenant: Tenant, name: str) -> bytes | None:
    client = moto.client()
    try:
        body: bytes = client.get_object(Bucket=BUCKET, Key=f"{tenant.id}/{name}")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return body


async def migrate(
    api: httpx.AsyncClient, t: Tenant, dataset: str, to_tier: str, mode: str
) -> dict[str, Any]:
    r = await api.post(
        "/v1/migrations",
        json={"dataset": dataset, "to_tier": to_tier, "mode": mode},
        headers=t.headers,
    )
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    assert body["state"] in ("PENDING", "RUNNING", "SUCCEEDED")
    return body


def stored(
    storage: StorageSettings, moto: MotoServer, tier: str, t: Tenant, name: str
) -> bytes | None:
    if tier == "s3":
        return s3_object(moto, t, name)
    path = tier_file(storage, tier, t, name)
    return path.read_bytes() if path.exists() else None


SIZES = {"empty": 0, "one": 1, "odd": 2 * CHUNK + 12_345, "chunks": 3 * CHUNK}
HOPS = [("archive", "move"), ("s3", "move"), ("local", "move"), ("s3", "copy")]


async def test_round_trips_between_every_tier(
    api: httpx.AsyncClient, storage: StorageSettings, moto: MotoServer
) -> None:
    t = await new_tenant(api)
    data = {name: payload(size, seed=size % 11) for name, size in SIZES.items()}
    for name, content in data.items():
        await put(api, t, f"rt/{name}", content)
    tier = "local"
    async with running_datamover(storage):
        for to_tier, mode in HOPS:
            started = [await migrate(api, t, f"rt/{n}", to_tier, mode) for n in data]
            for m in started:
                assert m["from_tier"] == tier
                done = await wait_migration(api, t, m["id"])
                name = done["dataset"].removeprefix("rt/")
                assert done["state"] == "SUCCEEDED", done
                assert done["checksum"] == xxh(data[name])
                assert done["bytes_done"] == done["bytes_total"] == len(data[name])
                assert done["finished_at"] is not None
                assert stored(storage, moto, to_tier, t, done["dataset"]) == data[name]
                left = stored(storage, moto, tier, t, done["dataset"])
                assert (left is None) == (mode == "move"), (name, tier, mode)
                meta = (
                    await api.get(f"/v1/datasets/{done['dataset']}?meta=1", headers=t.headers)
                ).json()
                assert meta["tier"] == to_tier
                assert meta["checksum"] == xxh(data[name])
                got = await api.get(f"/v1/datasets/{done['dataset']}", headers=t.headers)
                assert got.content == data[name]
            tier = to_tier
    assert meta["tiers"] == ["local", "s3"]  # the copy kept the source


async def test_idempotency_key_and_conflicts(api: httpx.AsyncClient) -> None:
    t = await new_tenant(api)
    await put(api, t, "idem.bin", b"abc")
    body = {"dataset": "idem.bin", "to_tier": "archive", "mode": "copy"}
    headers = {**t.headers, "Idempotency-Key": "k-1"}
    first = await api.post("/v1/migrations", json=body, headers=headers)
    again = await api.post("/v1/migrations", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    listed = (
        await api.get("/v1/migrations", params={"dataset": "idem.bin"}, headers=t.headers)
    ).json()
    assert [m["id"] for m in listed["items"]] == [first.json()["id"]]
    same_tier = {"dataset": "idem.bin", "to_tier": "local", "mode": "copy"}
    assert (await api.post("/v1/migrations", json=same_tier, headers=t.headers)).status_code == 409
    bad = {"dataset": "idem.bin", "to_tier": "tape", "mode": "copy"}
    assert (await api.post("/v1/migrations", json=bad, headers=t.headers)).status_code == 422
    missing = {"dataset": "nope.bin", "to_tier": "s3", "mode": "copy"}
    assert (await api.post("/v1/migrations", json=missing, headers=t.headers)).status_code == 404


class CorruptingTier(FileTier):
    """Flips one byte of chunk 1 on the target right after copying it there."""

    @staticmethod
    def flip(upload: Upload, offset: int) -> None:
        if offset == CHUNK:
            with open(upload.temp, "r+b") as f:
                f.seek(offset + 1000)
                byte = f.read(1)
                f.seek(offset + 1000)
                f.write(bytes([byte[0] ^ 0xFF]))

    async def write(self, upload: Upload, index: int, offset: int, data: bytes) -> str | None:
        result = await super().write(upload, index, offset, data)
        self.flip(upload, offset)
        return result

    def copy_chunk(self, source: Path, upload: Upload, offset: int, length: int) -> None:
        super().copy_chunk(source, upload, offset, length)
        self.flip(upload, offset)


async def test_corrupted_chunk_is_caught_by_verification(
    api: httpx.AsyncClient, storage: StorageSettings
) -> None:
    t = await new_tenant(api)
    data = payload(3 * CHUNK + 99, seed=5)
    await put(api, t, "bad/chunk", data)
    async with running_datamover(storage) as dm:
        runner_storage = dm.state.mover.runner.storage
        runner_storage.tiers["archive"] = CorruptingTier("archive", storage.archive, fsync=False)
        m = await migrate(api, t, "bad/chunk", "archive", "move")
        done = await wait_migration(api, t, m["id"])
    assert done["state"] == "FAILED"
    assert "verification failed" in done["error"]
    assert xxh(data) in done["error"]
    assert not tier_file(storage, "archive", t, "bad/chunk").exists()  # nothing published
    temp_dir = Path(storage.archive.root) / TEMP_DIR
    assert not any(temp_dir.glob(f"migration-{m['id']}*"))  # the partial copy is gone
    assert tier_file(storage, "local", t, "bad/chunk").read_bytes() == data  # source intact
    meta = (await api.get("/v1/datasets/bad/chunk?meta=1", headers=t.headers)).json()
    assert meta["tier"] == "local"
    assert meta["tiers"] == ["local"]


async def test_s3_outage_fails_cleanly_then_a_resubmission_succeeds(
    api: httpx.AsyncClient, storage: StorageSettings, tiers_root: Path
) -> None:
    outage = MotoServer()
    outage.start()
    try:
        tiers = storage_settings(tiers_root, outage)
        t = await new_tenant(api)
        data = payload(6 * CHUNK, seed=9)
        await put(api, t, "out/data", data)
        async with running_datamover(tiers, throttle_bytes_per_s=8 * 2**20, in_flight=2):
            m = await migrate(api, t, "out/data", "s3", "move")
            running = await wait_until(api, t, m["id"], lambda b: b["bytes_done"] >= CHUNK)
            assert running["state"] == "RUNNING"
            listed = outage.client().list_objects_v2(Bucket=BUCKET)
            assert listed.get("KeyCount", 0) == 0  # parts uploaded, nothing visible
            outage.stop()
            failed = await wait_migration(api, t, m["id"], timeout=30)
            assert failed["state"] == "FAILED"
            assert "unavailable" in failed["error"], failed["error"]
            meta = (await api.get("/v1/datasets/out/data?meta=1", headers=t.headers)).json()
            assert meta["tier"] == "local"
            assert tier_file(storage, "local", t, "out/data").read_bytes() == data
            assert (await api.get("/v1/datasets/out/data", headers=t.headers)).content == data

            outage.start()
            await asyncio.sleep(1.2)  # the breaker's reset timeout: it lets a trial through
            again = await migrate(api, t, "out/data", "s3", "move")
            done = await wait_migration(api, t, again["id"], timeout=60)
        assert done["state"] == "SUCCEEDED", done
        assert done["checksum"] == xxh(data)
        assert s3_object(outage, t, "out/data") == data
        assert not tier_file(storage, "local", t, "out/data").exists()
    finally:
        outage.stop()


async def wait_until(
    api: httpx.AsyncClient, t: Tenant, migration_id: str, test: Any, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = (
            await api.get(f"/v1/migrations/{migration_id}", headers=t.headers)
        ).json()
        if test(body):
            return body
        assert body["state"] != "FAILED", body
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_per_tenant_limit_the_rest_wait_in_order(
    api: httpx.AsyncClient, storage: StorageSettings
) -> None:
    a, b = await new_tenant(api), await new_tenant(api)
    for i in range(5):
        await put(api, a, f"lim/{i}", payload(CHUNK, seed=i))
    await put(api, b, "lim/b", b"b" * 10)
    async with running_datamover(storage, throttle_bytes_per_s=6 * 2**20):
        ids = [(await migrate(api, a, f"lim/{i}", "archive", "copy"))["id"] for i in range(5)]
        most = 0
        b_id = None
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            items = (await api.get("/v1/migrations", headers=a.headers)).json()["items"]
            mine = [m for m in items if m["id"] in ids]
            running = sum(m["state"] == "RUNNING" for m in mine)
            most = max(most, running)
            assert running <= 3
            if running == 3 and b_id is None:  # a is at its limit; b is not held up by it
                b_id = (await migrate(api, b, "lim/b", "archive", "copy"))["id"]
                b_done = await wait_migration(api, b, b_id, timeout=10)
                assert b_done["state"] == "SUCCEEDED"
            if all(m["state"] == "SUCCEEDED" for m in mine):
                break
            await asyncio.sleep(0.05)
    assert most == 3
    assert b_id is not None
    by_id = {m["id"]: m for m in mine}
    starts = [by_id[i]["started_at"] for i in ids]
    assert starts == sorted(starts)  # in the order they were requested
    finishes = sorted(by_id[i]["finished_at"] for i in ids[:3])
    assert starts[3] >= finishes[0]  # the fourth waited for a free slot


@pytest.mark.parametrize("mode", ["move"])
async def test_delete_during_migration_fails_it_without_publishing(
    api: httpx.AsyncClient, storage: StorageSettings, mode: str
) -> None:
    t = await new_tenant(api)
    await put(api, t, "gone/x", payload(4 * CHUNK, seed=2))
    async with running_datamover(storage, throttle_bytes_per_s=8 * 2**20):
        m = await migrate(api, t, "gone/x", "archive", mode)
        await wait_until(api, t, m["id"], lambda b: b["bytes_done"] > 0)
        assert (await api.delete("/v1/datasets/gone/x", headers=t.headers)).status_code == 204
        done = await wait_migration(api, t, m["id"])
    assert done["state"] == "FAILED"
    assert "deleted or overwritten" in done["error"]
    assert not tier_file(storage, "archive", t, "gone/x").exists()


async def test_a_copy_ends_without_waiting_for_the_next_progress_record(
    api: httpx.AsyncClient, storage: StorageSettings
) -> None:
    """The runner wakes when the copy ends, not when its progress interval does."""
    t = await new_tenant(api)
    data = payload(2 * CHUNK + 5, seed=31)
    await put(api, t, "tick/data", data)
    async with running_datamover(storage, progress_interval_s=600.0):
        m = await migrate(api, t, "tick/data", "archive", "copy")
        done = await wait_migration(api, t, m["id"], timeout=60)
    assert done["state"] == "SUCCEEDED", done
    assert tier_file(storage, "archive", t, "tick/data").read_bytes() == data
