"""The storage quota is exact under concurrency: reservations through the API (30 uploads to
different names, as many at once as the gateway's pool has connections) and through
``shared.storage.quota`` directly (what a job's output publishing uses), and copies to
another tier count."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.errors import QuotaExceeded
from shared.settings import CommonSettings, StorageSettings
from shared.storage.quota import Hold, check_fits, release, reserve, storage_used
from tests.datamover.harness import new_tenant, payload, put, running_datamover, wait_migration

QUOTA = 1_000_000
PIECE = 100_000


async def _usage(api: httpx.AsyncClient, headers: dict[str, str]) -> int:
    listed = await api.get("/v1/datasets", params={"limit": 200}, headers=headers)
    assert listed.status_code == 200, listed.text
    return sum(d["size"] * len(d["tiers"]) for d in listed.json()["items"])


async def _warm(gateway: FastAPI) -> int:
    """Open the gateway's pool, one connection after another, and return its size. Uploads
    hold a connection at a time each; as many at once as there are, on connections already
    open, never wait for one to open or be free: such a wait is held to the pool's timeouts
    (``connect_timeout_s``, a 503), which are not the quota under test."""
    engine = gateway.state.resources.engine
    size: int = gateway.state.settings.postgres.pool_size
    async with contextlib.AsyncExitStack() as held:
        for _ in range(size):
            conn = await held.enter_async_context(engine.connect())
            await conn.exec_driver_sql("SELECT 1")
    return size


async def test_concurrent_uploads_to_different_names_never_exceed_the_quota(
    api: httpx.AsyncClient, gateway: FastAPI
) -> None:
    t = await new_tenant(api, quotas={"storage_bytes": QUOTA})
    data = payload(PIECE)
    connections = asyncio.Semaphore(await _warm(gateway))

    async def upload(i: int) -> int:
        async with connections:
            r = await api.put(f"/v1/datasets/race/{i}.bin", content=data, headers=t.headers)
        assert r.status_code in (201, 413), r.text
        return r.status_code

    codes = await asyncio.gather(*(upload(i) for i in range(30)))
    assert codes.count(201) <= QUOTA // PIECE
    assert codes.count(201) + codes.count(413) == 30
    assert await _usage(api, t.headers) == codes.count(201) * PIECE <= QUOTA


async def test_streamed_uploads_without_a_length_never_exceed_the_quota(
    api: httpx.AsyncClient, gateway: FastAPI
) -> None:
    """Chunked bodies (no Content-Length) reserve as they stream."""
    t = await new_tenant(api, quotas={"storage_bytes": QUOTA})
    data = payload(PIECE)
    connections = asyncio.Semaphore(await _warm(gateway))

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, PIECE, 10_000):
            yield data[i : i + 10_000]
            await asyncio.sleep(0)

    async def upload(i: int) -> int:
        async with connections:
            r = await api.put(f"/v1/datasets/s/{i}", content=body(), headers=t.headers)
        assert r.status_code in (201, 413), r.text
        return r.status_code

    codes = await asyncio.gather(*(upload(i) for i in range(30)))
    assert 0 < codes.count(201) <= QUOTA // PIECE
    assert await _usage(api, t.headers) == codes.count(201) * PIECE <= QUOTA


async def test_a_refused_or_failed_upload_leaves_nothing_held(
    api: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await new_tenant(api, quotas={"storage_bytes": QUOTA})
    r = await api.put("/v1/datasets/big", content=payload(QUOTA + 1), headers=t.headers)
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    async with sessions() as session:
        assert await storage_used(session=session, tenant_id=uuid.UUID(t.id)) == 0
    ok = await api.put("/v1/datasets/fits", content=payload(QUOTA), headers=t.headers)
    assert ok.status_code == 201, ok.text


async def test_fifty_concurrent_reservations_grant_exactly_the_quota(
    api: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], settings: CommonSettings
) -> None:
    tenant_id = uuid.UUID((await new_tenant(api)).id)
    # As many at once as the pool has connections: a caller waiting for one would be held to
    # the pool's checkout timeout (a wall-clock bound), not to the quota's rules.
    connections = asyncio.Semaphore(settings.postgres.pool_size)

    async def one() -> bool:
        try:
            async with connections, sessions() as session, session.begin():
                await reserve(session=session, tenant_id=tenant_id, nbytes=PIECE, quota=QUOTA)
        except QuotaExceeded:
            return False
        return True

    granted = await asyncio.gather(*(one() for _ in range(50)))
    assert granted.count(True) == QUOTA // PIECE
    async with sessions() as session:
        assert await storage_used(session=session, tenant_id=tenant_id) == QUOTA


async def test_the_exact_check_counts_every_reservation_but_its_own(
    api: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant_id = uuid.UUID((await new_tenant(api)).id)
    hold = Hold(sessions, tenant_id=tenant_id, quota=QUOTA, step=PIECE)
    await hold.cover(PIECE)
    await hold.cover(PIECE + 1)  # grows by a step at most, as the quota allows
    assert PIECE + 1 <= hold.held <= 2 * PIECE
    with pytest.raises(QuotaExceeded):
        await hold.cover(QUOTA + 1)
    async with sessions() as session, session.begin():
        with pytest.raises(QuotaExceeded):  # held bytes of others count, its own do not
            await reserve(session=session, tenant_id=tenant_id, nbytes=QUOTA, quota=QUOTA)
    async with sessions() as session, session.begin():
        await check_fits(
            session=session, tenant_id=tenant_id, nbytes=QUOTA, quota=QUOTA, reservation_id=hold.id
        )
        assert hold.id is not None
        await release(session=session, reservation_id=hold.id)
        assert await storage_used(session=session, tenant_id=tenant_id) == 0
    async with sessions() as session, session.begin():
        r = await reserve(session=session, tenant_id=tenant_id, nbytes=QUOTA, quota=QUOTA)
        with pytest.raises(QuotaExceeded):
            await check_fits(session=session, tenant_id=tenant_id, nbytes=1, quota=QUOTA)
        await release(session=session, reservation_id=r.id)
        await check_fits(session=session, tenant_id=tenant_id, nbytes=QUOTA, quota=QUOTA)


async def test_a_copy_to_another_tier_counts_against_the_quota(
    api: httpx.AsyncClient, storage: StorageSettings
) -> None:
    """A copy holds its bytes from the request (413 if they do not fit), and once done the
    dataset's second copy counts as stored; a move changes nothing."""
    t = await new_tenant(api, quotas={"storage_bytes": QUOTA})
    h = t.headers
    await put(api, t, "c.bin", payload(400_000))
    first = await api.post(
        "/v1/migrations", json={"dataset": "c.bin", "to_tier": "archive"}, headers=h
    )
    assert first.status_code == 202, first.text
    # 800,000 held: a second copy, or 300,000 more bytes, would take the tenant over
    again = await api.post("/v1/migrations", json={"dataset": "c.bin", "to_tier": "s3"}, headers=h)
    assert again.status_code == 413, again.text
    assert again.headers["content-type"].startswith("application/problem+json")
    over = await api.put("/v1/datasets/more", content=payload(300_000), headers=h)
    assert over.status_code == 413, over.text
    async with running_datamover(storage):
        done = await wait_migration(api, t, first.json()["id"])
    assert done["state"] == "SUCCEEDED", done
    meta = (await api.get("/v1/datasets/c.bin?meta=1", headers=h)).json()
    assert meta["tiers"] == ["archive", "local"]
    assert (
        await api.put("/v1/datasets/more", content=payload(300_000), headers=h)
    ).status_code == 413
    fits = await api.put("/v1/datasets/more", content=payload(200_000), headers=h)
    assert fits.status_code == 201, fits.text


async def test_a_move_or_a_failed_copy_holds_nothing(
    api: httpx.AsyncClient, storage: StorageSettings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await new_tenant(api, quotas={"storage_bytes": QUOTA})
    tenant_id = uuid.UUID(t.id)
    await put(api, t, "m.bin", payload(600_000))
    move = {"dataset": "m.bin", "to_tier": "archive", "mode": "move"}
    m = await api.post("/v1/migrations", json=move, headers=t.headers)
    assert m.status_code == 202, m.text
    async with sessions() as session:
        assert await storage_used(session=session, tenant_id=tenant_id) == 600_000
    gone = await api.delete("/v1/datasets/m.bin", headers=t.headers)  # the copy source goes
    assert gone.status_code == 204
    await put(api, t, "n.bin", payload(300_000))
    copy = await api.post(
        "/v1/migrations", json={"dataset": "n.bin", "to_tier": "archive"}, headers=t.headers
    )
    assert copy.status_code == 202, copy.text
    assert (await api.delete("/v1/datasets/n.bin", headers=t.headers)).status_code == 204
    async with running_datamover(storage):
        for started in (m, copy):
            done = await wait_migration(api, t, started.json()["id"])
            assert done["state"] == "FAILED", done
    async with sessions() as session:
        assert await storage_used(session=session, tenant_id=tenant_id) == 0
