"""Checkpoints on a real cluster: a ``montecarlo_pi`` job that checkpoints every second,
its worker killed with SIGKILL mid-run (the lease expires, the reaper queues it again) or
stopped with SIGTERM (a drain: checkpointed at once, handed back ``"drained"``), resumes on a
worker from its last checkpoint and ends with the uninterrupted run's estimate, bit for bit;
its log says where it saved and resumed."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.worker.checkpoint import FILE
from shared.storage.checkpoints import folder_for
from tests.e2e.conftest import new_tenant_key, own_cluster, wait_for_state
from tests.tiers import disk_tiers
from tools.cluster import LocalCluster

SAMPLES = 8_000_000_000  # 15 s or more on the two threads of a worker of a 2-core host
JOB = {
    "kernel": "montecarlo_pi",
    "device": "cpu",
    "params": {"samples": SAMPLES, "seed": 11},
    "checkpoint_interval_s": 1,
}
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("ckpt-tiers"))


@pytest.fixture(scope="module")
def cluster(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, tiers: Path
) -> Iterator[LocalCluster]:
    env = disk_tiers(tiers)
    with own_cluster(
        "ckpt",
        test_env,
        tmp_path_factory,
        env={**env, "STRATUS_PREEMPT__MIN_GAP_S": "1", "STRATUS_PREEMPT__INTERVAL_S": "0.5"},
        workers=2,
        worker_env={
            "STRATUS_CONCURRENCY": "1",
            "STRATUS_LEASE_S": "3",
            "STRATUS_HEARTBEAT_INTERVAL_S": "0.5",
            "STRATUS_SHUTDOWN_GRACE_S": "60",  # a drain must not wait for the job to end
        },
    ) as c:
        yield c


@pytest.fixture(scope="module")
async def api(cluster: LocalCluster) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=cluster.url("gateway"), timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def uninterrupted() -> dict[str, Any]:
    from services.worker.kernels import montecarlo

    return montecarlo.estimate(SAMPLES, 11)


async def _checkpointed(api: httpx.AsyncClient, job_id: str, h: dict[str, str]) -> str:
    """The job's log once it shows a checkpoint of its running attempt."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        log = (await api.get(f"/v1/jobs/{job_id}/log", headers=h)).text
        if "checkpoint at" in log:
            return log
        await asyncio.sleep(0.5)
    raise AssertionError(f"no checkpoint in the log: {log}")


def _worker_process(cluster: LocalCluster, worker: str) -> int:
    """The pid of the worker process named ``worker`` (``<host>-<pid>``)."""
    pid = int(worker.rsplit("-", 1)[1])
    assert pid in {p.pid for p in cluster.status()}, worker
    return pid


async def _removed(folder: Path, within_s: float = 30.0) -> None:
    """``folder`` gone within ``within_s`` (the worker removes it just after the record)."""
    deadline = time.monotonic() + within_s
    while folder.exists():
        assert time.monotonic() < deadline, sorted(p.name for p in folder.iterdir())
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("how", ["kill", "drain"])
async def test_a_job_resumes_from_its_checkpoint_exactly(
    api: httpx.AsyncClient,
    cluster: LocalCluster,
    uninterrupted: dict[str, Any],
    how: str,
    tiers: Path,
) -> None:
    h = await new_tenant_key(api, f"ckpt-{how}")
    r = await api.post("/v1/jobs", json=JOB, headers=h)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert r.json()["checkpoint_interval_s"] == 1
    await _checkpointed(api, job_id, h)
    folder = folder_for(tiers / "local", job_id)  # the scratch tier's
    assert (folder / FILE).exists()
    running = (await api.get(f"/v1/jobs/{job_id}", headers=h)).json()
    assert running["state"] == "RUNNING", running
    pid = _worker_process(cluster, running["worker"])
    os.kill(pid, signal.SIGKILL if how == "kill" else signal.SIGTERM)
    done = await wait_for_state(api, job_id, h, {"SUCCEEDED", "FAILED"}, 240)
    assert done["state"] == "SUCCEEDED", done
    assert done["result"] == uninterrupted  # bit for bit: the same floats
    assert done["resumed_from"] is not None
    assert done["resumed_from"] > 0
    assert done["checkpoints"] >= 1
    assert done["attempts"] == 2
    await _removed(folder)  # final: nobody resumes it
    log = (await api.get(f"/v1/jobs/{job_id}/log", headers=h)).text
    assert f"resumed from the checkpoint at {done['resumed_from']}" in log
    events = (await api.get(f"/v1/jobs/{job_id}/events", headers=h)).json()["items"]
    back = [e for e in events if e["state"] == "QUEUED" and e["attempt"] == 1]
    if how == "drain":
        assert done["preemptions"] == 1
        assert [e["reason"] for e in back] == ["drained"], events
    else:
        assert done["preemptions"] == 0
        assert back, events  # the reaper's: the lease expired
    cluster.wait_workers(2)


async def test_a_higher_priority_job_preempts_one_checkpointing_job(
    api: httpx.AsyncClient, cluster: LocalCluster, uninterrupted: dict[str, Any]
) -> None:
    h = await new_tenant_key(api, "ckpt-preempt")
    low = []
    for _ in range(2):  # both slots of the pool (two workers of one slot, no autoscaler)
        r = await api.post("/v1/jobs", json={**JOB, "priority": 1}, headers=h)
        assert r.status_code == 201, r.text
        low.append(r.json()["id"])
    for job_id in low:
        await _checkpointed(api, job_id, h)
    quick = {"kernel": "montecarlo_pi", "device": "cpu", "params": {"samples": 10**6}}
    r = await api.post("/v1/jobs", json={**quick, "priority": 9}, headers=h)
    high = r.json()["id"]
    high_done = await wait_for_state(api, high, h, {"SUCCEEDED"}, 120)
    ends = [await wait_for_state(api, j, h, {"SUCCEEDED", "FAILED"}, 240) for j in low]
    assert [e["state"] for e in ends] == ["SUCCEEDED", "SUCCEEDED"], ends
    assert all(e["result"] == uninterrupted for e in ends)  # bit for bit, preempted or not
    preempted = [e for e in ends if e["preemptions"]]
    assert len(preempted) == 1, ends  # one preemption made the room: the other ran on
    moved = preempted[0]
    assert moved["resumed_from"] is not None
    assert moved["attempts"] == 2
    assert high_done["started_at"] < moved["finished_at"]  # it ran while the low one waited
    events = (await api.get(f"/v1/jobs/{moved['id']}/events", headers=h)).json()["items"]
    assert [e["reason"] for e in events if e["state"] == "QUEUED" and e["attempt"] == 1] == [
        "preempted"
    ], events
