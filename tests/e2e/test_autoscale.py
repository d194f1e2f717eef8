"""Elastic scaling with the ``local`` backend, for real: the services under supervisord, the
scheduler's autoscaler starting and stopping worker processes over supervisord's socket.

A cpu pool with ``min=1, max=4`` takes a burst of 300 jobs: it reaches 4 workers while the
burst still waits, every job succeeds on its first attempt, the new workers take part, and the
pool steps back to 1 once the queue drained, each step no sooner than the cooldown allows.
A cuda pool (numba's CUDA simulator) with ``min=0`` has no worker while idle; one job starts
one, runs on it, and the pool returns to zero.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ADMIN, new_tenant_key, own_cluster, wait_for_state
from tests.tiers import disk_tiers
from tools.cluster import (
    CUDA_WORKER,
    Autoscale,
    LocalCluster,
)

INTERVAL_S = 0.5  # the autoscaler's pass
COOLDOWN_S = 6.0
SHUTDOWN_GRACE_S = 15.0  # a worker's graceful stop, at most
BURST = 300
DRAIN_S = 240.0  # the whole burst, on a busy machine
# one pass per step down (4 -> 1), each waiting at most for a worker's graceful stop
BACK_TO_MIN_S = COOLDOWN_S + 3 * (INTERVAL_S + SHUTDOWN_GRACE_S)
# device cpu: an ``any`` job goes to a free GPU slot first, and the cuda pool of the test
# before (the CUDA simulator, slow) may still be up within its cooldown. About 0.1 s each:
# the burst must outlast the seconds new workers take to start, or they never take part.
JOB = {"kernel": "montecarlo_pi", "device": "cpu", "params": {"samples": 30_000_000}}
# twice the waits of the longest test (the cluster's start counts against the first)
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2 * (2 * BACK_TO_MIN_S + DRAIN_S))]


@pytest.fixture(scope="module")
def scaled(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    tiers = Path(tmp_path_factory.mktemp("scale-tiers"))
    env = {
        **disk_tiers(tiers),
        "STRATUS_AUTOSCALE__INTERVAL_S": str(INTERVAL_S),
        "STRATUS_AUTOSCALE__COOLDOWN_S": str(COOLDOWN_S),
        "STRATUS_AUTOSCALE__TARGET_JOBS_PER_WORKER": "4",
    }
    with own_cluster(
        "scale",
        test_env,
        tmp_path_factory,
        env=env,
        timeout=120,
        worker_env={
            "STRATUS_CONCURRENCY": "1",
            "STRATUS_THREADS_PER_PROCESS": "1",
            "STRATUS_LEASE_S": "5",
            "STRATUS_HEARTBEAT_INTERVAL_S": "0.5",
            "STRATUS_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S),
        },
        autoscale=Autoscale(
            min_workers=1,
            max_workers=4,
            cuda_min_workers=0,
            cuda_max_workers=1,
            cuda_env={"STRATUS_CUDA_SIMULATOR": "true", "STRATUS_WARM_KERNELS": "false"},
        ),
    ) as c:
        yield c


@pytest.fixture(scope="module")
async def api(scaled: LocalCluster) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=scaled.url("gateway"), timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
async def tenant(api: httpx.AsyncClient) -> dict[str, str]:
    return await new_tenant_key(api, "scale", requests_per_second=10_000)


async def until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` every 0.2 s; the seconds it took, or fail saying ``what``."""
    start = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(0.2)
    return time.monotonic() - start


async def pools(api: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    r = await api.get("/v1/admin/pools", headers=ADMIN)
    assert r.status_code == 200, r.text
    return {p["pool"]: p for p in r.json()["items"]}


async def test_a_pool_at_zero_starts_a_worker_for_a_job_and_returns_to_zero(
    scaled: LocalCluster, api: httpx.AsyncClient, tenant: dict[str, str]
) -> None:
    cuda = (await pools(api))["cuda"]
    assert cuda["current_workers"] == 0
    assert cuda["min_workers"] == 0
    assert scaled.up_workers(CUDA_WORKER) == []
    await asyncio.sleep(4 * INTERVAL_S)  # idle for a few passes: it stays at zero
    assert scaled.up_workers(CUDA_WORKER) == []
    job = {"kernel": "montecarlo_pi", "device": "cuda", "params": {"samples": 2000, "seed": 7}}
    r = await api.post("/v1/jobs", json=job, headers=tenant)
    assert r.status_code == 201, r.text
    await until(lambda: len(scaled.up_workers(CUDA_WORKER)) == 1, 60, "a cuda worker started")
    done = await wait_for_state(
        api, r.json()["id"], tenant, {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"}, 120
    )
    assert done["state"] == "SUCCEEDED", done
    assert CUDA_WORKER in done["worker"]
    assert done["attempts"] == 1
    await until(
        lambda: scaled.up_workers(CUDA_WORKER) == [], BACK_TO_MIN_S, "the cuda pool back at 0"
    )
    # the decision is stored once the backend's graceful stop returned: a few seconds after
    # the worker stopped counting as up
    deadline = time.monotonic() + 30
    while True:
        decisions = (await pools(api))["cuda"]["decisions"]  # newest first
        got = [(d["action"], d["from"], d["to"]) for d in decisions[:2]]
        if got == [("down", 1, 0), ("up", 0, 1)] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert got == [("down", 1, 0), ("up", 0, 1)]


async def test_a_burst_scales_the_pool_to_max_and_back_without_losing_a_job(
    scaled: LocalCluster, api: httpx.AsyncClient, tenant: dict[str, str]
) -> None:
    await until(lambda: len(scaled.up_workers()) == 1, BACK_TO_MIN_S, "the cpu pool at 1")
    sem = asyncio.Semaphore(16)
    ids: list[str] = []

    async def submit() -> None:
        async with sem:
            r = await api.post("/v1/jobs", json=JOB, headers=tenant)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])

    async def all_final() -> int:
        r = await api.get("/v1/usage", headers=tenant)
        jobs = r.json()["jobs"]
        return sum(int(jobs.get(s, 0)) for s in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"))

    t0 = time.monotonic()
    burst = asyncio.gather(*(submit() for _ in range(BURST)))
    reached = await until(lambda: len(scaled.up_workers()) == 4, DRAIN_S, "4 cpu workers")
    # scaled for the burst, not after it: some of it still waits
    assert await all_final() < BURST + 1
    await burst
    peak = (await pools(api))["cpu"]
    assert peak["current_workers"] == 4
    assert peak["desired_workers"] == 4

    deadline = time.monotonic() + DRAIN_S
    while await all_final() < BURST + 1:  # + the cuda job of the test before
        assert time.monotonic() < deadline, f"the burst did not finish within {DRAIN_S:.0f} s"
        await asyncio.sleep(0.5)
    drained = time.monotonic()
    back = await until(lambda: len(scaled.up_workers()) == 1, BACK_TO_MIN_S, "the pool at 1")
    print(f"4 workers after {reached:.1f}s, drained after {drained - t0:.1f}s, 1 after {back:.1f}s")

    listed = await api.get("/v1/jobs", params={"limit": 500}, headers=tenant)
    jobs = {j["id"]: j for j in listed.json()["items"] if j["id"] in set(ids)}
    assert len(jobs) == BURST
    states = {j["state"] for j in jobs.values()}
    assert states == {"SUCCEEDED"}, states
    assert {j["attempts"] for j in jobs.values()} == {1}  # none retried by a scale-down
    assert len({j["worker"] for j in jobs.values()}) >= 2  # the new workers took part

    cpu = (await pools(api))["cpu"]
    assert cpu["current_workers"] == 1
    history = list(reversed(cpu["decisions"]))  # oldest first
    last_up = max(i for i, d in enumerate(history) if d["action"] == "up")
    downs = history[last_up + 1 :]
    assert [(d["from"], d["to"]) for d in downs][-3:] == [(4, 3), (3, 2), (2, 1)]
    assert all(d["to"] == d["from"] - 1 for d in downs)  # one step at a time
    first_down = datetime.fromisoformat(downs[0]["at"])
    assert first_down - datetime.fromisoformat(history[last_up]["at"]) >= timedelta(
        seconds=COOLDOWN_S
    )  # not sooner than the cooldown after the pool grew
