"""A scale-down that consolidates running jobs, for real (the ``local`` backend under
supervisord): a cpu pool of 1-2 workers of 2 slots, one long job on each worker and both
half empty. The autoscaler, sized for the demand (2 jobs: 1 worker), stops one of the two
workers while both jobs run:

- jobs that checkpoint: the stopped worker drains its job through a checkpoint, at once, and
  the job resumes on the other worker's free slot (``preemptions`` 1, ``resumed_from`` set):
  the pool runs one worker for the rest of the jobs;
- jobs that do not: the stopped worker stops taking work and waits for its job, which ends
  there on its first attempt (the worker holds its machine until then).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ADMIN, new_tenant_key, own_cluster, wait_for_state
from tests.tiers import disk_tiers
from tools.cluster import Autoscale, LocalCluster

COOLDOWN_S = 3.0
GRACE_S = 300  # a stopped worker waits this long for a job that does not checkpoint
# about 45 s of one core of a 2-core host: long beside a worker's start and the cooldown
LONG = {"kernel": "montecarlo_pi", "device": "cpu", "params": {"samples": 15_000_000_000}}
# cancelled once the long jobs run: it only keeps a slot busy meanwhile
FILLER = {"kernel": "montecarlo_pi", "device": "cpu", "params": {"samples": 10**12}}
FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def scaled(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    tiers = Path(tmp_path_factory.mktemp("consolidate-tiers"))
    env = {
        **disk_tiers(tiers),
        "STRATUS_AUTOSCALE__INTERVAL_S": "0.5",
        "STRATUS_AUTOSCALE__COOLDOWN_S": str(COOLDOWN_S),
        "STRATUS_AUTOSCALE__TARGET_JOBS_PER_WORKER": "2",
    }
    with own_cluster(
        "consolidate",
        test_env,
        tmp_path_factory,
        env=env,
        timeout=120,
        worker_env={
            "STRATUS_CONCURRENCY": "2",
            "STRATUS_THREADS_PER_PROCESS": "1",
            "STRATUS_HEARTBEAT_INTERVAL_S": "0.5",
            "STRATUS_SHUTDOWN_GRACE_S": str(GRACE_S),
        },
        worker_stop_wait_s=GRACE_S + 30,
        autoscale=Autoscale(min_workers=1, max_workers=2),
    ) as c:
        yield c


@pytest.fixture(scope="module")
async def api(scaled: LocalCluster) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=scaled.url("gateway"), timeout=30) as c:
        yield c


async def until(check: Callable[[], Any], timeout: float, what: str) -> None:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(0.3)


async def two_half_empty_workers(
    api: httpx.AsyncClient, scaled: LocalCluster, h: dict[str, str], checkpoint_s: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A long job on each of the pool's two workers, each with a free slot; the two jobs."""

    async def submit(body: dict[str, Any]) -> str:
        body = {**body, "checkpoint_interval_s": checkpoint_s}
        r = await api.post("/v1/jobs", json=body, headers=h)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def job(i: str) -> dict[str, Any]:
        return dict((await api.get(f"/v1/jobs/{i}", headers=h)).json())

    async def running(*ids: str) -> bool:
        return all([(await job(i))["state"] == "RUNNING" for i in ids])

    await until(
        lambda: asyncio.to_thread(lambda: len(scaled.up_workers()) == 1), 120, "the pool at 1"
    )
    first, filler1 = await submit(LONG), await submit(FILLER)
    await until(lambda: running(first, filler1), 120, "both slots of the first worker busy")
    second, filler2 = await submit(LONG), await submit(FILLER)  # a second worker takes them
    await until(lambda: running(second, filler2), 180, "the second worker's slots busy")
    a, b = await job(first), await job(second)
    assert a["worker"] != b["worker"], (a, b)
    for i in (filler1, filler2):  # each worker half empty: 2 jobs, sized for 1 worker
        assert (await api.post(f"/v1/jobs/{i}/cancel", headers=h)).status_code in (200, 202)
    return a, b


async def downs_with_jobs(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await api.get("/v1/admin/pools", headers=ADMIN)
    cpu = next(p for p in r.json()["items"] if p["pool"] == "cpu")
    return [d for d in cpu["decisions"] if d["action"] == "down" and d["demand"] > 0]


async def scaled_down_with_jobs(api: httpx.AsyncClient, before: int) -> None:
    """The autoscaler took a scale-down 2 -> 1 while the pool had its 2 jobs (after the
    ``before`` such decisions already there)."""
    downs = await downs_with_jobs(api)
    assert len(downs) > before, downs
    assert (downs[0]["from"], downs[0]["to"], downs[0]["demand"]) == (2, 1, 2), downs


async def test_a_scale_down_drains_a_half_empty_worker_through_checkpoints(
    scaled: LocalCluster, api: httpx.AsyncClient
) -> None:
    h = await new_tenant_key(api, "consolidate-ck")
    a, b = await two_half_empty_workers(api, scaled, h, checkpoint_s=1)
    before = len(await downs_with_jobs(api))
    ends = [await wait_for_state(api, j["id"], h, FINAL, 400) for j in (a, b)]
    assert [e["state"] for e in ends] == ["SUCCEEDED", "SUCCEEDED"], ends
    moved = [e for e in ends if e["preemptions"]]
    assert len(moved) == 1, ends  # one worker stopped, its job moved; the other ran on
    stayed = next(e for e in ends if not e["preemptions"])
    assert moved[0]["resumed_from"] is not None, moved
    assert moved[0]["resumed_from"] > 0, moved
    assert moved[0]["worker"] == stayed["worker"]  # resumed on the other worker's free slot
    assert stayed["attempts"] == 1
    events = (await api.get(f"/v1/jobs/{moved[0]['id']}/events", headers=h)).json()["items"]
    assert "drained" in [e["reason"] for e in events if e["state"] == "QUEUED"], events
    await scaled_down_with_jobs(api, before)
    assert len(scaled.up_workers()) == 1


async def test_without_checkpoints_the_same_scale_down_waits_for_the_job(
    scaled: LocalCluster, api: httpx.AsyncClient
) -> None:
    h = await new_tenant_key(api, "consolidate-wait")
    a, b = await two_half_empty_workers(api, scaled, h, checkpoint_s=0)
    before = len(await downs_with_jobs(api))

    async def one_up_while_both_run() -> bool:
        up = await asyncio.to_thread(scaled.up_workers)
        both = [(await api.get(f"/v1/jobs/{j['id']}", headers=h)).json() for j in (a, b)]
        return len(up) == 1 and all(j["state"] == "RUNNING" for j in both)

    await until(one_up_while_both_run, 120, "a worker stopped while both jobs ran")
    ends = [await wait_for_state(api, j["id"], h, FINAL, 400) for j in (a, b)]
    assert [e["state"] for e in ends] == ["SUCCEEDED", "SUCCEEDED"], ends
    # each ended where it started, on its first attempt: the stopped worker waited for it
    assert [(e["worker"], e["attempts"], e["preemptions"]) for e in ends] == [
        (a["worker"], 1, 0),
        (b["worker"], 1, 0),
    ]
    await scaled_down_with_jobs(api, before)
