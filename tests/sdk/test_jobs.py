"""Kernels and jobs through the SDK, sync and async, against a live cluster."""

from __future__ import annotations

import uuid

import pytest
from stratus_client import ApiError, AsyncClient, Client, JobState, WaitTimeout

from tests.sdk.conftest import MC, Retries, new_key


async def test_kernels(client: Client, aclient: AsyncClient) -> None:
    names = {k.name for k in client.kernels()}
    assert {"saxpy", "matmul", "stencil2d", "nbody", "histogram", "montecarlo_pi"} <= names
    assert {k.name for k in await aclient.kernels()} == names
    mc = next(k for k in client.kernels() if k.name == "montecarlo_pi")
    assert "samples" in mc.params_schema["properties"]


async def test_submit_get_wait(client: Client, aclient: AsyncClient) -> None:
    labels = {"study": uuid.uuid4().hex[:8]}
    job = client.submit("montecarlo_pi", params=MC, labels=labels, priority=7)
    assert job.state in {"PENDING", "QUEUED"}
    assert (job.kernel, job.priority, job.labels) == ("montecarlo_pi", 7, labels)
    done = client.wait(job.id, timeout=60)
    assert done.state == JobState.SUCCEEDED
    assert done.succeeded
    assert done.is_final
    assert done.result is not None
    assert 3.0 < done.result["estimate"] < 3.3
    assert client.get(job.id).finished_at == done.finished_at

    ajob = await aclient.submit("montecarlo_pi", params=MC, labels=labels)
    adone = await aclient.wait(ajob.id, timeout=60)
    assert adone.state == JobState.SUCCEEDED
    assert (await aclient.get(ajob.id)).id == ajob.id


async def test_list_walks_every_page_with_filters(url: str, key: str) -> None:
    """Five jobs listed two to a page: all five, newest first, in both clients."""
    labels = {"batch": uuid.uuid4().hex[:8]}
    with Client(url, key, page_size=2) as c:
        ids = [c.submit("montecarlo_pi", params=MC, labels=labels).id for _ in range(5)]
        other = c.submit("montecarlo_pi", params=MC).id  # no label: filtered out
        listed = [j.id for j in c.list(labels=labels)]
        assert listed == ids[::-1]
        for job_id in [*ids, other]:
            c.wait(job_id, timeout=60)
        done = [j.id for j in c.list(labels=labels, state="SUCCEEDED", kernel="montecarlo_pi")]
        assert sorted(done) == sorted(ids)
        assert [j.id for j in c.list(labels=labels, state="FAILED")] == []
        assert len(list(c.list())) == 6
    async with AsyncClient(url, key, page_size=2) as ac:
        assert [j.id async for j in ac.list(labels=labels)] == ids[::-1]
        assert len([j async for j in ac.list(state="SUCCEEDED")]) == 6


async def test_cancel(url: str, admin: Client, retries: Retries) -> None:
    """Jobs of a tenant with no running slot wait until they are cancelled; a second cancel
    is the service's 409, raised and not retried."""
    key = new_key(admin, "cancel", max_running_jobs=0)
    with Client(url, key, retry=retries.policy) as c:
        job = c.submit("montecarlo_pi", params=MC)
        assert c.cancel(job.id).id == job.id
        assert c.wait(job.id, timeout=30).state == JobState.CANCELLED
        with pytest.raises(ApiError) as info:
            c.cancel(job.id)
        assert info.value.status == 409
    async with AsyncClient(url, key, retry=retries.policy) as ac:
        ajob = await ac.submit("montecarlo_pi", params=MC)
        await ac.cancel(ajob.id)
        assert (await ac.wait(ajob.id, timeout=30)).state == JobState.CANCELLED
        with pytest.raises(ApiError) as ainfo:
            await ac.cancel(ajob.id)
        assert ainfo.value.status == 409
    assert retries.events == []


async def test_wait_gives_up_after_its_timeout(url: str, admin: Client) -> None:
    """A tenant with no running slot: its job never starts, and wait raises WaitTimeout with
    the job as last seen."""
    key = new_key(admin, "held", max_running_jobs=0)
    with Client(url, key) as c:
        job = c.submit("montecarlo_pi", params=MC)
        with pytest.raises(WaitTimeout) as info:
            c.wait(job.id, timeout=0.5)
        assert isinstance(info.value, TimeoutError)
        assert info.value.last.id == job.id
        assert not info.value.last.is_final
        async with AsyncClient(url, key) as ac:
            with pytest.raises(WaitTimeout):
                await ac.wait(job.id, timeout=0.5)
        c.cancel(job.id)
        assert c.wait(job.id, timeout=30).state == JobState.CANCELLED


async def test_problems_are_api_errors_and_never_retried(
    client: Client, aclient: AsyncClient, retries: Retries
) -> None:
    with pytest.raises(ApiError) as info:
        client.submit("montecarlo_pi", params={"samples": 0})
    error = info.value
    assert error.status == 422
    assert error.type != "about:blank"
    assert error.title
    assert any("samples" in str(e["loc"]) for e in error.errors), error.errors
    with pytest.raises(ApiError) as missing:
        await aclient.get(str(uuid.uuid4()))
    assert missing.value.status == 404
    with pytest.raises(ApiError) as unknown:
        await aclient.submit("no-such-kernel")
    assert unknown.value.status == 422
    assert retries.events == []
    assert list(client.list()) == []  # nothing was created


async def test_a_bad_key_is_401(url: str) -> None:
    with Client(url, "not-a-key") as c, pytest.raises(ApiError) as info:
        c.kernels()
    assert info.value.status == 401
