"""Job arrays through the SDK, sync and async: submit, counts, elements page by page, an
element by its id, cancel."""

from __future__ import annotations

import asyncio

from stratus_client import ApiError, ArraySpec, AsyncClient, Client, Job, JobState

from tests.sdk.conftest import MC, new_key

SIZE = 5
TRIES = 30


async def cancel(client: AsyncClient, job_id: str) -> Job:
    """Cancel, trying again after a 409 that carries Retry-After: the service's answer
    when the cancel meets the scheduler materialising the same array (the SDK retries no
    4xx but 429, so the caller does)."""
    for _ in range(TRIES):
        try:
            return await client.cancel(job_id)
        except ApiError as error:
            if error.status != 409 or error.retry_after is None:
                raise
            await asyncio.sleep(error.retry_after)
    raise AssertionError(f"cancel of {job_id} still busy after {TRIES} tries")


async def test_an_array_and_its_elements(url: str, key: str) -> None:
    spec = ArraySpec(
        size=SIZE, index_param="seed", max_concurrent=2, overrides=[{}, {"samples": 2000}]
    )
    with Client(url, key, page_size=2) as c:
        array = c.submit("montecarlo_pi", params=MC, array=spec)
        assert array.array is not None
        assert (array.array.size, array.array.max_concurrent) == (SIZE, 2)
        done = c.wait(array.id, timeout=120)
        assert done.state == JobState.SUCCEEDED
        assert done.array is not None
        assert done.array.counts["SUCCEEDED"] == SIZE
        elements = list(c.elements(array.id))  # three pages of two
        assert [e.id for e in elements] == [f"{array.id}:{i}" for i in range(SIZE)]
        assert [e.array_index for e in elements] == list(range(SIZE))
        assert {e.array_id for e in elements} == {array.id}
        assert [e.params["seed"] for e in elements] == list(range(SIZE))
        assert [e.params["samples"] for e in elements] == [1000, 2000, 1000, 1000, 1000]
        assert all(e.result is not None for e in elements)
        assert c.get(f"{array.id}:3").result == elements[3].result
        assert [j.id for j in c.list()] == [array.id]  # the array once, not its elements
        assert len(list(c.elements(array.id, state="SUCCEEDED"))) == SIZE
        assert list(c.elements(array.id, state="FAILED")) == []
    async with AsyncClient(url, key, page_size=2) as ac:
        aarray = await ac.submit(
            "montecarlo_pi", params=MC, array={"size": 3, "index_param": "seed"}
        )
        adone = await ac.wait(aarray.id, timeout=120)
        assert adone.array is not None
        assert adone.array.counts["SUCCEEDED"] == 3
        ids = [e.id async for e in ac.elements(aarray.id)]
        assert ids == [f"{aarray.id}:{i}" for i in range(3)]
        assert (await ac.get(ids[2])).array_index == 2


async def test_cancel_an_array(url: str, admin: Client) -> None:
    """A tenant with no running slot: its arrays wait until cancelled, every element then
    CANCELLED."""
    key = new_key(admin, "held-array", max_running_jobs=0)
    async with AsyncClient(url, key) as ac:
        aarray = await ac.submit("montecarlo_pi", params=MC, array={"size": 2})
        await cancel(ac, f"{aarray.id}:1")
        assert (await ac.get(f"{aarray.id}:1")).state == JobState.CANCELLED
        await cancel(ac, aarray.id)
        assert (await ac.wait(aarray.id, timeout=30)).state == JobState.CANCELLED
    with Client(url, key) as c:
        array = c.submit("montecarlo_pi", params=MC, array={"size": 3})
        async with AsyncClient(url, key) as ac:
            await cancel(ac, array.id)  # the sync client's cancel is the same call
        done = c.wait(array.id, timeout=30)
        assert done.state == JobState.CANCELLED
        assert done.array is not None
        assert done.array.counts.get("CANCELLED") == 3
        assert {e.state for e in c.elements(array.id)} == {"CANCELLED"}
