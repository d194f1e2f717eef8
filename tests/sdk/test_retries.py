"""The SDK's retries against the real gateway: a 429 of the rate limit and a 503 of a
database outage are retried after ``Retry-After``, a submission whose answer was lost is
retried with the same Idempotency-Key; each ends with exactly one job.

The outage and the lost answer are made with TCP proxies on this test's event loop: one
between a gateway of its own and PostgreSQL, one between the client and the gateway. The
shared servers keep running, and each proxy is restored or closed when its block ends. The
sync client runs in a thread so that the loop keeps the proxies going."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from stratus_client import AsyncClient, Client, RetryEvent, RetryPolicy

from tests.datamover.harness import free_port
from tests.e2e.conftest import another_gateway
from tests.netfault import TcpProxy
from tests.sdk.conftest import MC, new_key
from tools.cluster import LocalCluster


def one_job(url: str, key: str) -> str:
    """The id of the tenant's only job (fails when it has none or several)."""
    with Client(url, key) as c:
        (job,) = list(c.list())
        c.wait(job.id, timeout=60)
        return job.id


async def test_429_is_retried_after_retry_after(url: str, admin: Client) -> None:
    """One request a second: the submission right after a first request gets a 429, waits
    its Retry-After, and then goes through, once."""
    events: list[RetryEvent] = []
    key = new_key(admin, "rps", requests_per_second=1)
    with Client(url, key, retry=RetryPolicy(on_retry=events.append)) as c:
        c.usage()
        job = c.submit("montecarlo_pi", params=MC)
    assert events[0].status == 429
    assert events[0].delay_s >= 1
    assert one_job(url, key) == job.id

    aevents: list[RetryEvent] = []
    akey = new_key(admin, "rps-async", requests_per_second=1)
    async with AsyncClient(url, akey, retry=RetryPolicy(on_retry=aevents.append)) as ac:
        await ac.tenant()
        ajob = await ac.submit("montecarlo_pi", params=MC)
    assert aevents[0].status == 429
    assert one_job(url, akey) == ajob.id


@dataclass
class Outage:
    """A gateway whose link to PostgreSQL goes through ``proxy``."""

    proxy: TcpProxy
    url: str


@pytest.fixture
async def outage(sdk_cluster: LocalCluster) -> AsyncIterator[Outage]:
    pg_port = int(sdk_cluster.cfg.env.get("STRATUS_POSTGRES__PORT", "5432"))
    async with TcpProxy.running(pg_port) as proxy:
        env = {**sdk_cluster.cfg.env, "STRATUS_POSTGRES__PORT": str(proxy.port)}
        async with another_gateway(env, free_port()) as gateway:
            try:
                yield Outage(proxy, str(gateway.base_url))
            finally:
                # The gateway's stop waits on this loop (a blocking wait): with the proxy
                # gone its last statements fail at once instead of hanging in the proxy.
                await proxy.stop()


async def test_503_of_a_database_outage_is_retried(outage: Outage, url: str, admin: Client) -> None:
    """The gateway loses PostgreSQL: the submission gets its 503; the database comes back
    while the client waits the Retry-After, and the retry creates the job, once."""
    loop = asyncio.get_running_loop()
    events: list[RetryEvent] = []

    def restore_on_first_retry(event: RetryEvent) -> None:
        events.append(event)
        if len(events) == 1:  # in the client's thread: the proxy runs on the loop
            asyncio.run_coroutine_threadsafe(outage.proxy.start(), loop).result(10)

    key = new_key(admin, "outage")
    with Client(outage.url, key, retry=RetryPolicy(on_retry=restore_on_first_retry)) as c:
        await asyncio.to_thread(c.kernels)  # the key is known (and cached) before the outage
        await outage.proxy.stop()
        job = await asyncio.to_thread(c.submit, "montecarlo_pi", params=MC)
    assert events[0].status == 503
    assert events[0].delay_s >= 1
    assert one_job(url, key) == job.id

    aevents: list[RetryEvent] = []
    restored: list[asyncio.Task[None]] = []

    def arestore_on_first_retry(event: RetryEvent) -> None:
        aevents.append(event)
        if len(aevents) == 1:  # on the loop: the client's wait lets the proxy start
            restored.append(loop.create_task(outage.proxy.start()))

    akey = new_key(admin, "outage-async")
    policy = RetryPolicy(on_retry=arestore_on_first_retry)
    async with AsyncClient(outage.url, akey, retry=policy) as ac:
        await ac.kernels()
        await outage.proxy.stop()
        ajob = await ac.submit("montecarlo_pi", params=MC)
    await restored[0]
    assert aevents[0].status == 503
    assert one_job(url, akey) == ajob.id


STATUS_201 = b"HTTP/1.1 201"


async def test_a_lost_answer_is_retried_with_the_same_idempotency_key(
    url: str, admin: Client
) -> None:
    """The connection breaks just before the gateway's 201 reaches the client: the job was
    created, and the retry (same Idempotency-Key) gets that job back instead of a second."""
    port = int(url.rsplit(":", 1)[1])
    async with TcpProxy.running(port) as proxy:
        via_proxy = f"http://127.0.0.1:{proxy.port}"
        for run in ("sync", "async"):
            events: list[RetryEvent] = []
            key = new_key(admin, f"lost-{run}")
            cut = proxy.cut_on(STATUS_201, upstream=False, after=-len(STATUS_201))
            policy = RetryPolicy(on_retry=events.append)
            if run == "sync":
                with Client(via_proxy, key, retry=policy) as c:
                    job = await asyncio.to_thread(c.submit, "montecarlo_pi", params=MC)
            else:
                async with AsyncClient(via_proxy, key, retry=policy) as ac:
                    job = await ac.submit("montecarlo_pi", params=MC)
            assert cut.is_set()
            assert events[0].error is not None
            assert events[0].status is None
            assert one_job(url, key) == job.id


async def test_failed_connections_of_a_cancel_are_not_retried(url: str, key: str) -> None:
    """A cancel whose answer is lost may have worked: the error is raised, not repeated."""
    with Client(url, key) as c:
        job = c.submit("montecarlo_pi", params=MC)
        c.wait(job.id, timeout=60)
    port = int(url.rsplit(":", 1)[1])
    events: list[RetryEvent] = []
    async with TcpProxy.running(port) as proxy:
        proxy.cut_on(b"/cancel", upstream=True, after=0)
        policy = RetryPolicy(on_retry=events.append)
        async with AsyncClient(f"http://127.0.0.1:{proxy.port}", key, retry=policy) as ac:
            with pytest.raises(httpx.TransportError):
                await ac.cancel(job.id)
    assert events == []
