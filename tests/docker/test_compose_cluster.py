"""Stratus under ``docker compose`` on a real engine, from the images ``make images`` builds.

One compose project for the module: the README's curl walkthrough, run as written against it;
``--scale worker=3`` and jobs spread over the three worker containers (each its own host: its
container id is the worker's name); a worker container killed mid-job and the job finished by
another; the scheduler's process killed and the restart policy bringing dispatch back; a
new worker container's time to its first job beside a new worker process's.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.docker.conftest import REPO, Compose, docker, new_tenant_key, wait_for_state

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def api(cluster: Compose) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.url, timeout=30) as client:
        yield client


def readme_walkthrough() -> str:
    """The README's "A first job (curl)" block."""
    text = (REPO / "README.md").read_text()
    section = text.split("### A first job (curl)", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "the README has no curl walkthrough"
    return match.group(1)


def test_the_readme_walkthrough(cluster: Compose, api: httpx.Client, tmp_path: Path) -> None:
    script = readme_walkthrough()
    assert "GW=http://127.0.0.1:8000" in script
    script = script.replace("GW=http://127.0.0.1:8000", f"GW={cluster.url}")
    script = re.sub(r"^ADMIN=.*$", f"ADMIN={cluster.admin_key}", script, flags=re.M)
    script = script.replace(".venv/bin/python", sys.executable)
    script = "set -euo pipefail\n" + script + '\necho "WALKTHROUGH $KEY $JOB $JOB2"\n'
    r = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    _, key, job, job2 = r.stdout.strip().splitlines()[-1].split()
    h = {"Authorization": f"Bearer {key}"}
    first = wait_for_state(api, job, h, {"SUCCEEDED", "FAILED"})
    assert first["state"] == "SUCCEEDED", first
    assert 3.1 < first["result"]["estimate"] < 3.2
    second = wait_for_state(api, job2, h, {"SUCCEEDED", "FAILED"})
    assert second["state"] == "SUCCEEDED", second
    # the upload went to the gateway's container, the job ran in a worker's: the shared volume
    assert sum(second["result"]["counts"]) == 1_000_000
    assert (tmp_path / "x-again.npy").read_bytes() == (tmp_path / "x.npy").read_bytes()


def container_of(worker_name: str) -> str:
    """A worker's name is ``<container hostname>-<pid>``; the hostname is the short id."""
    return worker_name.rsplit("-", 1)[0]


def test_three_workers_each_in_its_own_container_share_the_jobs(
    cluster: Compose, api: httpx.Client
) -> None:
    t0 = time.monotonic()
    cluster.run("up", "-d", "--wait", "--scale", "worker=3", "--no-recreate", timeout=600)
    print(f"\n--scale worker=3: two new worker containers healthy in {time.monotonic() - t0:.1f} s")
    workers = cluster.running("worker")
    assert len(workers) == 3
    ids = {str(c["ID"])[:12] for c in workers}
    h = new_tenant_key(api, cluster.admin_key, "spread")
    jobs = []
    for i in range(30):
        body = {"kernel": "montecarlo_pi", "params": {"samples": 30_000_000, "seed": i}}
        r = api.post("/v1/jobs", json=body, headers=h)
        assert r.status_code == 201, r.text
        jobs.append(r.json()["id"])
    done = [wait_for_state(api, j, h, {"SUCCEEDED", "FAILED"}, timeout=300) for j in jobs]
    assert all(j["state"] == "SUCCEEDED" for j in done), [j["error"] for j in done]
    ran_on = {container_of(j["worker"]) for j in done}
    print(f"\n30 jobs over the worker containers: {sorted(ran_on)}")
    assert ran_on == ids


def test_a_worker_container_killed_mid_job_and_another_finishes_it(
    cluster: Compose, api: httpx.Client
) -> None:
    if len(cluster.running("worker")) < 2:
        cluster.run("up", "-d", "--wait", "--scale", "worker=3", "--no-recreate", timeout=600)
    h = new_tenant_key(api, cluster.admin_key, "kill")
    body = {"kernel": "montecarlo_pi", "params": {"samples": 600_000_000, "seed": 3}}
    r = api.post("/v1/jobs", json=body, headers=h)
    assert r.status_code == 201, r.text
    job = wait_for_state(api, r.json()["id"], h, {"RUNNING"}, timeout=120)
    victim = container_of(job["worker"])
    docker("kill", victim)
    t0 = time.monotonic()
    done = wait_for_state(api, job["id"], h, {"SUCCEEDED", "FAILED"}, timeout=300)
    print(f"\nthe killed worker's job finished elsewhere {time.monotonic() - t0:.1f} s later")
    assert done["state"] == "SUCCEEDED", done
    assert done["attempts"] == 2
    assert container_of(done["worker"]) != victim
    attempts = api.get(f"/v1/jobs/{job['id']}/attempts", headers=h).json()["items"]
    assert container_of(attempts[0]["worker"]) == victim


def test_the_scheduler_killed_and_its_restart_policy_brings_dispatch_back(
    cluster: Compose, api: httpx.Client
) -> None:
    (scheduler,) = cluster.running("scheduler")
    cid = str(scheduler["ID"])
    before = int(docker("inspect", "-f", "{{.RestartCount}}", cid).strip())
    pid = int(docker("inspect", "-f", "{{.State.Pid}}", cid).strip())
    # a crash, not a `docker kill` (which the engine records as a manual stop and does not
    # restart): SIGKILL to the container's main process from the host
    subprocess.run(["kill", "-9", str(pid)], check=True)
    t0 = time.monotonic()
    h = new_tenant_key(api, cluster.admin_key, "after-crash")
    r = api.post(
        "/v1/jobs", json={"kernel": "montecarlo_pi", "params": {"samples": 1000}}, headers=h
    )
    assert r.status_code == 201, r.text
    done = wait_for_state(api, r.json()["id"], h, {"SUCCEEDED", "FAILED"}, timeout=240)
    print(f"\nscheduler crashed: a job submitted then ran {time.monotonic() - t0:.1f} s later")
    assert done["state"] == "SUCCEEDED", done
    after = int(docker("inspect", "-f", "{{.RestartCount}}", cid).strip())
    assert after == before + 1
    assert docker("inspect", "-f", "{{.State.Status}}", cid).strip() == "running"


def first_start(
    api: httpx.Client,
    h: dict[str, str],
    is_new: Callable[[str], bool],
    since: float,
    timeout: float = 180,
) -> float:
    """The ``started_at`` (epoch seconds, ``since`` or later) of the first job whose worker
    ``is_new``."""
    deadline = time.monotonic() + timeout
    while True:
        starts = []
        for state in ("RUNNING", "SUCCEEDED"):
            r = api.get("/v1/jobs", params={"state": state, "limit": 200}, headers=h)
            assert r.status_code == 200, r.text
            starts += [
                datetime.fromisoformat(j["started_at"]).timestamp()
                for j in r.json()["items"]
                if j.get("worker") and j.get("started_at") and is_new(j["worker"])
            ]
            starts = [t for t in starts if t >= since]
        if starts:
            return min(starts)
        assert time.monotonic() < deadline, "no job on the new worker"
        time.sleep(0.25)


def live_cpu_workers(api: httpx.Client, admin_key: str) -> list[str]:
    r = api.get("/v1/admin/pools", headers={"Authorization": f"Bearer {admin_key}"})
    assert r.status_code == 200, r.text
    (cpu,) = [p for p in r.json()["items"] if p["pool"] == "cpu"]
    return [str(w["id"]) for w in cpu["workers"]]


def no_live_worker(api: httpx.Client, admin_key: str, timeout: float = 90) -> None:
    """Until no CPU worker's heartbeat is fresh (the scheduler counts no slot)."""
    deadline = time.monotonic() + timeout
    while live := live_cpu_workers(api, admin_key):
        assert time.monotonic() < deadline, f"workers still live: {live}"
        time.sleep(0.5)


def test_a_new_worker_containers_time_to_its_first_job_beside_a_new_worker_process(
    cluster: Compose, api: httpx.Client
) -> None:
    """What the ``docker`` autoscale backend adds (a new container) beside what the ``local``
    one adds (a new worker process on a host already up: here, a container of the worker's
    image that runs nothing else), each while jobs wait and no other worker runs: seconds
    from the command to the new worker's first job's start. Also the image's size."""
    cluster.run("up", "-d", "--wait", "--scale", "worker=0", timeout=600)
    no_live_worker(api, cluster.admin_key)
    h = new_tenant_key(api, cluster.admin_key, "first-job")
    for i in range(60):  # a backlog (nothing can run it yet)
        body = {"kernel": "montecarlo_pi", "params": {"samples": 20_000_000, "seed": i}}
        assert api.post("/v1/jobs", json=body, headers=h).status_code == 201

    # the local backend's way: a new process on a host that is up
    host = f"{cluster.project}-idle-host"
    cluster.run("run", "-d", "--no-deps", "--name", host, "worker", "sleep", "infinity")
    t0 = time.time()
    docker(
        "exec", "-d", "-e", "STRATUS_NAME=local-probe", "-e", "STRATUS_PORT=8012",
        host, "python", "-m", "services.worker",
    )  # fmt: skip
    process_s = first_start(api, h, lambda w: w == "local-probe", t0) - t0
    docker("rm", "-f", host)
    no_live_worker(api, cluster.admin_key)

    # the docker backend's way: a new container
    t0 = time.time()
    cluster.run("up", "-d", "--no-recreate", "--scale", "worker=1", timeout=600)
    container_s = first_start(api, h, lambda w: w != "local-probe", t0) - t0
    size = int(docker("image", "inspect", "-f", "{{.Size}}", "stratus:latest").strip())
    print(
        f"\na new worker's first job: {container_s:.1f} s for a new container "
        f"(docker compose up --scale worker=1), {process_s:.1f} s for a new process on a "
        f"host already up (as the local backend starts one); stratus:latest {size / 1e6:.0f} MB"
    )
    assert container_s > 0
    assert process_s > 0
