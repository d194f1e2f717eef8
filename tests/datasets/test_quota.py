"""The storage quota is exact under concurrency: reservations through the API (30 uploads to
different names at once) and through ``shared.storage.quota`` directly (what a job's output
publishing uses), and copies to another tier count."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.errors import QuotaExceeded
from shared.storage.quota import Hold, release, reserve, settle, storage_used
from tests.datamover.harness import new_tenant, payload

QUOTA = 1_000_000
PIECE = 100_000


async def _usage(api: httpx.AsyncClient, headers: dict[str, str]) -> int:
    listed = await api.get("/v1/datasets", params={"limit": 200}, headers=headers)
    assert listed.status_code == 200, listed.text
    return sum(d["size"] * len(d["tiers"]) for d in listed.json()["items"])


async def test_concurrent_uploads_to_different_names_never_exceed_the_quota(
    api: httpx.AsyncClient,
) -> None:
    t = await new_tenant(api, quotas={"storage_bytes": QUOTA})
    data = payload(PIECE)

    async def upload(i: int) -> int:
        r = await api.put(f"/v1/datasets/race/{i}.bin", content=data, headers=t.headers)
        assert r.status_code in (201, 413), r.text
        return r.status_code

    codes = await asyncio.gather(*(upload(i) for i in range(30)))
    assert codes.count(201) <= QUOTA // PIECE
    assert codes.count(201) + codes.count(413) == 30
    assert await _usage(api, t.headers) == codes.count(201) * PIECE <= QUOTA


async def test_streamed_uploads_without_a_length_never_exceed_the_quota(
    api: httpx.AsyncClient,
) -> None:
    """Chunked bodies (no Content-Length) reserve as they stream."""
    t = await new_tenant(api, quotas={"storage_bytes": QUOTA})
    data = payload(PIECE)

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, PIECE, 10_000):
            yield data[i : i + 10_000]
            await asyncio.sleep(0)

    async def upload(i: int) -> int:
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
    api: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    tenant_id = uuid.UUID((await new_tenant(api)).id)

    async def one() -> bool:
        try:
            async with sessions() as session, session.begin():
                await reserve(session=session, tenant_id=tenant_id, nbytes=PIECE, quota=QUOTA)
        except QuotaExceeded:
            return False
        return True

    granted = await asyncio.gather(*(one() for _ in range(50)))
    assert granted.count(True) == QUOTA // PIECE
    async with sessions() as session:
        assert await storage_used(session=session, tenant_id=tenant_id) == QUOTA


async def test_settle_checks_again_and_turns_the_reservation_into_stored_bytes(
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
        await settle(
            session=session, tenant_id=tenant_id, nbytes=QUOTA, quota=QUOTA, reservation_id=hold.id
        )
        assert await storage_used(session=session, tenant_id=tenant_id) == 0
    async with sessions() as session, session.begin():
        r = await reserve(session=session, tenant_id=tenant_id, nbytes=QUOTA, quota=QUOTA)
        with pytest.raises(QuotaExceeded):
            await settle(session=session, tenant_id=tenant_id, nbytes=1, quota=QUOTA)
        await release(session=session, reservation_id=r.id)
        await settle(session=session, tenant_id=tenant_id, nbytes=QUOTA, quota=QUOTA)
