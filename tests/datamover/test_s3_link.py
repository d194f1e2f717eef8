"""The datamover's link to S3 broken for real: ``moto_server`` behind a TCP proxy
(``tests.netfault``). A connection cut in the middle of a part's upload, and a link that
stalls for longer than the client's read timeout, cost retries, never the data: the
migration ends SUCCEEDED and the object is byte for byte the dataset."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from shared.settings import StorageSettings
from tests.datamover.harness import (
    BUCKET,
    CHUNK,
    MotoServer,
    new_tenant,
    payload,
    put,
    running_datamover,
    wait_migration,
)
from tests.datamover.test_migrations import migrate
from tests.netfault import TcpProxy

READ_TIMEOUT_S = 1.0  # the proxied client's: a stall longer than this is a failed call


@pytest.fixture
async def proxy(moto: MotoServer) -> AsyncIterator[TcpProxy]:
    async with TcpProxy.running(moto.port) as proxy:
        yield proxy


def through(proxy: TcpProxy, storage: StorageSettings) -> StorageSettings:
    """``storage`` with its ``s3`` tier reached through ``proxy``."""
    s3 = storage.s3.model_copy(
        update={"endpoint_url": f"http://127.0.0.1:{proxy.port}", "read_timeout_s": READ_TIMEOUT_S}
    )
    return storage.model_copy(update={"s3": s3})


def s3_bytes(moto: MotoServer, key: str) -> bytes:
    body: bytes = moto.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body


async def test_a_connection_cut_mid_part_is_retried_and_the_object_is_whole(
    api: httpx.AsyncClient, storage: StorageSettings, moto: MotoServer, proxy: TcpProxy
) -> None:
    t = await new_tenant(api)
    data = payload(3 * CHUNK + 1234, seed=11)
    await put(api, t, "s3cut/a.bin", data)
    # the second part's request, cut a megabyte into its body
    cut = proxy.cut_on(b"partNumber=2", after=2**20)
    async with running_datamover(through(proxy, storage), retry_max_attempts=6):
        started = await migrate(api, t, "s3cut/a.bin", "s3", "copy")
        done = await wait_migration(api, t, started["id"], timeout=60)
    assert cut.is_set()
    assert done["state"] == "SUCCEEDED", done
    assert done["attempts"] == 1  # the part was retried, the migration did not fail
    assert done["bytes_done"] == done["bytes_copied"] == len(data)  # the cut part counted once
    assert s3_bytes(moto, f"{t.id}/s3cut/a.bin") == data


async def test_a_stalled_link_times_out_and_the_copy_completes_once_it_flows(
    api: httpx.AsyncClient, storage: StorageSettings, moto: MotoServer, proxy: TcpProxy
) -> None:
    """A slow link: every byte held in the proxy for three read timeouts from the migration's
    first call to S3; the calls that time out are retried, and once the link flows again the
    copy completes."""
    t = await new_tenant(api)
    data = payload(2 * CHUNK + 77, seed=12)
    await put(api, t, "s3slow/a.bin", data)
    proxy.stall()
    async with running_datamover(through(proxy, storage), retry_max_attempts=8):
        mid = (await migrate(api, t, "s3slow/a.bin", "s3", "copy"))["id"]
        async with asyncio.timeout(30):
            while not proxy.accepted:  # the datamover is calling S3, and nothing flows
                await asyncio.sleep(0.05)
        await asyncio.sleep(3 * READ_TIMEOUT_S)
        held = await api.get(f"/v1/migrations/{mid}", headers=t.headers)
        assert held.json()["state"] in ("PENDING", "RUNNING"), held.text
        proxy.resume()
        done = await wait_migration(api, t, mid, timeout=60)
    assert done["state"] == "SUCCEEDED", done
    assert done["attempts"] == 1  # retried calls, not a failed attempt
    assert s3_bytes(moto, f"{t.id}/s3slow/a.bin") == data
