"""Fair share with real workers: two flooding tenants with weights 1 and 3 complete jobs at
1:3 over the busy period; a third tenant's single job starts within a few dispatch cycles."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.e2e.conftest import ADMIN, new_tenant_key, wait_for_state

pytestmark = pytest.mark.e2e

JOB = {"kernel": "montecarlo_pi", "params": {"samples": 10_000_000}}
PER_TENANT = 250  # far more than the workers run while the flood goes in, even when quiet


async def _tenant(api: httpx.AsyncClient, name: str, weight: int) -> tuple[str, dict[str, str]]:
    h = await new_tenant_key(api, name)
    mine = max(
        (await api.get("/v1/tenants", headers=ADMIN)).json()["items"], key=lambda t: t["created_at"]
    )
    r = await api.patch(
        f"/v1/tenants/{mine['id']}",
        json={"weight": weight, "quotas": {"requests_per_second": 10_000}},
        headers=ADMIN,
    )
    assert r.status_code == 200
    return mine["id"], h


async def _succeeded(api: httpx.AsyncClient, h: dict[str, str]) -> int:
    return int((await api.get("/v1/usage", headers=h)).json()["jobs"]["SUCCEEDED"])


async def test_weights_share_the_workers_and_a_light_tenant_is_not_starved(
    api: httpx.AsyncClient,
) -> None:
    _, light_h = await _tenant(api, "fs-light", 1)
    _, a = await _tenant(api, "fs-w1", 1)
    _, b = await _tenant(api, "fs-w3", 3)
    await asyncio.sleep(0.3)  # quota changes reach the gateway's cache
    sem = asyncio.Semaphore(16)

    async def submit(h: dict[str, str]) -> None:
        async with sem:
            r = await api.post("/v1/jobs", json=JOB, headers=h)
            assert r.status_code == 201, r.text

    await asyncio.gather(*(submit(h) for _ in range(PER_TENANT) for h in (a, b)))
    t0 = time.monotonic()
    lone = (await api.post("/v1/jobs", json=JOB, headers=light_h)).json()
    started = await wait_for_state(api, lone["id"], light_h, {"RUNNING", "SUCCEEDED"}, 30)
    waited = time.monotonic() - t0
    assert waited < 5.0, waited  # a few dispatch cycles, not the flood's backlog
    assert started["state"] in {"RUNNING", "SUCCEEDED"}
    # The busy period, from now (both queues deep, submissions over) until the heavier tenant
    # is through most of what it had left.
    base_a, base_b = await _succeeded(api, a), await _succeeded(api, b)
    left_b = PER_TENANT - base_b
    while True:
        done_a = await _succeeded(api, a) - base_a
        done_b = await _succeeded(api, b) - base_b
        if done_b >= 0.7 * left_b or time.monotonic() - t0 > 180:
            break
        await asyncio.sleep(0.1)
    assert done_a + done_b >= 60
    ratio = done_b / max(done_a, 1)
    assert 3 * 0.8 <= ratio <= 3 * 1.2, (done_a, done_b)
    for h in (a, b):  # leave no backlog for the tests after this one
        listed = (
            await api.get("/v1/jobs", params={"state": "QUEUED", "limit": 500}, headers=h)
        ).json()["items"]
        for j in listed:  # one at a time: a cancel storm is not what this test is about
            await api.post(f"/v1/jobs/{j['id']}/cancel", headers=h)
