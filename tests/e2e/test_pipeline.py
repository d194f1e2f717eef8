"""End to end: every service as a process, real PostgreSQL, RabbitMQ and Redis."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess

import httpx
import pytest

from tests.e2e.conftest import new_tenant_key, wait_for_state
from tools.cluster import LocalCluster

pytestmark = pytest.mark.e2e


def se(samples: int) -> float:
    p = math.pi / 4
    return 4 * math.sqrt(p * (1 - p) / samples)


async def test_montecarlo_pi_runs_to_succeeded(api: httpx.AsyncClient) -> None:
    h = await new_tenant_key(api, "e2e")
    samples = 200_000
    r = await api.post(
        "/v1/jobs",
        json={"kernel": "montecarlo_pi", "params": {"samples": samples, "seed": 42}},
        headers=h,
    )
    assert r.status_code == 201, r.text
    job = await wait_for_state(api, r.json()["id"], h, {"SUCCEEDED", "FAILED"})
    assert job["state"] == "SUCCEEDED", job
    assert abs(job["result"]["estimate"] - math.pi) < 4 * se(samples)
    assert job["attempts"] == 1
    assert job["worker"]
    assert job["created_at"] <= job["queued_at"] <= job["started_at"] <= job["finished_at"]


async def test_api_errors_end_to_end(api: httpx.AsyncClient) -> None:
    a = await new_tenant_key(api, "a")
    b = await new_tenant_key(api, "b")
    body = {"kernel": "montecarlo_pi", "params": {"samples": 10}}
    assert (await api.post("/v1/jobs", json=body)).status_code == 401
    h = {**a, "Idempotency-Key": "k-1"}
    first = await api.post("/v1/jobs", json=body, headers=h)
    again = await api.post("/v1/jobs", json=body, headers=h)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert (await api.get(f"/v1/jobs/{first.json()['id']}", headers=b)).status_code == 404
    assert (await api.post("/v1/jobs", json={"kernel": "nope"}, headers=a)).status_code == 422
    bad = {"kernel": "montecarlo_pi", "params": {"samples": -1}}
    assert (await api.post("/v1/jobs", json=bad, headers=a)).status_code == 422
    await wait_for_state(api, first.json()["id"], a, {"SUCCEEDED"})


async def test_priority_and_many_jobs_all_succeed(api: httpx.AsyncClient) -> None:
    h = await new_tenant_key(api, "many")
    rs = await asyncio.gather(
        *(
            api.post(
                "/v1/jobs",
                json={
                    "kernel": "montecarlo_pi",
                    "params": {"samples": 1000, "seed": i},
                    "priority": i % 10,
                },
                headers=h,
            )
            for i in range(60)
        )
    )
    assert all(r.status_code == 201 for r in rs)
    for r in rs:
        job = await wait_for_state(api, r.json()["id"], h, {"SUCCEEDED", "FAILED"})
        assert job["state"] == "SUCCEEDED"


async def test_job_of_a_killed_worker_is_requeued_and_completes(
    api: httpx.AsyncClient, cluster: LocalCluster
) -> None:
    h = await new_tenant_key(api, "kill")
    r = await api.post(
        "/v1/jobs",
        json={"kernel": "montecarlo_pi", "params": {"samples": 150_000_000, "seed": 1}},
        headers=h,
    )
    job = await wait_for_state(api, r.json()["id"], h, {"RUNNING"})
    victim = job["worker"]
    pid = int(victim.rsplit("-", 1)[1])
    subprocess.run(["pkill", "-9", "-P", str(pid)], check=False)  # its kernel processes
    os.kill(pid, signal.SIGKILL)
    done = await wait_for_state(api, r.json()["id"], h, {"SUCCEEDED", "FAILED"}, timeout=120)
    assert done["state"] == "SUCCEEDED", done
    assert done["attempts"] == 2
    assert done["worker"] != victim


async def test_cancel_running_job(api: httpx.AsyncClient) -> None:
    h = await new_tenant_key(api, "cancel")
    r = await api.post(
        "/v1/jobs", json={"kernel": "montecarlo_pi", "params": {"samples": 100_000_000}}, headers=h
    )
    await wait_for_state(api, r.json()["id"], h, {"RUNNING"})
    c = await api.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=h)
    assert c.status_code == 202
    assert c.json()["state"] == "CANCELLED"
    await asyncio.sleep(2)
    job = (await api.get(f"/v1/jobs/{r.json()['id']}", headers=h)).json()
    assert job["state"] == "CANCELLED"  # the worker's late report cannot move a final state
    assert (await api.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=h)).status_code == 409


async def test_usage_is_counted_by_the_tenant_service(api: httpx.AsyncClient) -> None:
    h = await new_tenant_key(api, "usage")
    r = await api.post(
        "/v1/jobs", json={"kernel": "montecarlo_pi", "params": {"samples": 20_000_000}}, headers=h
    )
    await wait_for_state(api, r.json()["id"], h, {"SUCCEEDED"})
    for _ in range(50):
        usage = (await api.get("/v1/usage", headers=h)).json()
        if usage["cpu_seconds"] > 0:
            break
        await asyncio.sleep(0.1)
    assert usage["cpu_seconds"] > 0.01
    assert usage["jobs"]["SUCCEEDED"] == 1
