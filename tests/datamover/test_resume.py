"""``kill -9`` of a real datamover process in the middle of a migration to S3: started again,
it resumes from the chunks already recorded instead of starting over."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import xxhash

from shared.settings import StorageSettings
from tests.datamover.harness import (
    BUCKET,
    CHUNK,
    MotoServer,
    datamover_env,
    new_tenant,
    payload,
    put,
    wait_migration,
)
from tests.processes import service_process


async def poll(api: httpx.AsyncClient, headers: dict[str, str], mid: str) -> dict[str, Any]:
    r = await api.get(f"/v1/migrations/{mid}", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_kill_9_mid_migration_resumes_from_done_chunks(
    api: httpx.AsyncClient,
    storage: StorageSettings,
    moto: MotoServer,
    test_env: dict[str, str],
    tmp_path: Path,
) -> None:
    t = await new_tenant(api)
    data = payload(16 * CHUNK + 4321, seed=7)  # 17 chunks, ~80 MiB
    total = len(data)
    await put(api, t, "resume/big.bin", data)
    env = datamover_env(
        test_env,
        storage,
        STRATUS_NAME=f"dm-resume-{t.id[:8]}",  # the same owner after the restart
        STRATUS_THROTTLE_BYTES_PER_S=str(16 * 2**20),
        STRATUS_IN_FLIGHT="4",
    )
    log = tmp_path / "datamover.log"
    with service_process("services.datamover", env, log) as first:
        r = await api.post(
            "/v1/migrations",
            json={"dataset": "resume/big.bin", "to_tier": "s3", "mode": "move"},
            headers=t.headers,
        )
        assert r.status_code == 202, r.text
        mid = r.json()["id"]
        # progress is recorded chunk by chunk while it runs, not only at the end
        seen: list[int] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = await poll(api, t.headers, mid)
            if m["bytes_done"] and m["bytes_done"] not in seen:
                seen.append(m["bytes_done"])
            if m["bytes_done"] >= total * 0.45:
                break
            assert m["state"] in ("PENDING", "RUNNING"), m
            await asyncio.sleep(0.05)
        assert m["state"] == "RUNNING", m
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    # the throttle lets a chunk through every third of a second, the progress is written
    # every fifth: the polls see it grow in steps of whole chunks
    assert len(seen) >= 3, seen
    assert seen == sorted(seen), seen
    assert all(done % CHUNK == 0 for done in seen), seen
    killed = await poll(api, t.headers, mid)
    assert killed["state"] == "RUNNING"
    done_at_kill, copied_at_kill = killed["bytes_done"], killed["bytes_copied"]
    assert total * 0.4 <= done_at_kill < total
    assert s3_keys(moto, t.id) == []  # parts are uploaded; nothing is visible yet

    with service_process("services.datamover", env, log):
        done = await wait_migration(api, t, mid, timeout=90)
    assert done["state"] == "SUCCEEDED", (done, log.read_text()[-3000:])
    assert done["attempts"] == 2
    copied_after = done["bytes_copied"] - copied_at_kill
    assert copied_after == total - done_at_kill  # only the chunks not recorded as done
    assert copied_after < 0.6 * total
    assert done["checksum"] == "xxh3-128:" + xxhash.xxh3_128(data).hexdigest()
    obj = moto.client().get_object(Bucket=BUCKET, Key=f"{t.id}/resume/big.bin")["Body"].read()
    assert obj == data
    assert not (Path(storage.local.root) / t.id / "resume/big.bin").exists()  # moved
    meta = (await api.get("/v1/datasets/resume/big.bin?meta=1", headers=t.headers)).json()
    assert meta["tier"] == "s3"


def s3_keys(moto: MotoServer, prefix: str) -> list[str]:
    listed = moto.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]
