"""Two gateways behind HAProxy and two schedulers, one active and one standing by on the
leader lock (deploy/docker/compose.ha.yml): when one gateway's container is killed, the
clients see at most a retried connection; when the active scheduler's container is killed,
the standby dispatches within 10 s; 500 jobs submitted through a gateway's kill, the active
scheduler's crash and a worker's kill all succeed, each once."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.docker.conftest import (
    REPO,
    Compose,
    docker,
    new_tenant_key,
    start_compose,
    stop_compose,
    wait_for_state,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def ha_cluster(
    docker_images: dict[str, float], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Compose]:
    compose = start_compose(
        tmp_path_factory.mktemp("ha"),
        extra_files=[REPO / "deploy/docker/compose.ha.yml"],
        extra_env={"HAPROXY_IMAGE": "stratus-offline/haproxy:latest"},
    )
    try:
        yield compose
    finally:
        stop_compose(compose)


RETRIED: list[str] = []


def get_with_one_retry(client: httpx.Client, path: str, headers: dict[str, str]) -> httpx.Response:
    try:
        return client.get(path, headers=headers)
    except httpx.TransportError as exc:
        RETRIED.append(type(exc).__name__)
        return client.get(path, headers=headers)  # a retried connection


def test_a_killed_gateway_costs_clients_at_most_a_retry(ha_cluster: Compose) -> None:
    gateways = ha_cluster.running("gateway")
    assert len(gateways) == 2
    admin = {"Authorization": f"Bearer {ha_cluster.admin_key}"}
    with httpx.Client(base_url=ha_cluster.url, timeout=10) as client:
        deadline = time.monotonic() + 30  # HAProxy finds the gateways through Docker's DNS
        while time.monotonic() < deadline:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        RETRIED.clear()
        for _ in range(40):
            r = get_with_one_retry(client, "/v1/tenants", admin)
            assert r.status_code == 200, r.text
        docker("kill", str(gateways[0]["ID"]))
        t0 = time.monotonic()
        statuses = []
        while time.monotonic() - t0 < 8:
            statuses.append(get_with_one_retry(client, "/v1/tenants", admin).status_code)
    print(
        f"\n{len(statuses)} requests in the 8 s after a gateway's kill: {set(statuses)}, "
        f"{len(RETRIED)} retried connections ({RETRIED})"
    )
    assert statuses
    assert set(statuses) == {200}
    assert len(ha_cluster.running("gateway")) == 1


def scheduler_roles(compose: Compose) -> dict[str, str]:
    """``GET /leader`` of each running scheduler container: {container id: role}."""
    probe = (
        "import json, urllib.request; print(json.load(urllib.request.urlopen("
        "'http://127.0.0.1:8001/leader', timeout=3))['role'])"
    )
    roles = {}
    for c in compose.running("scheduler"):
        cid = str(c["ID"])
        r = subprocess.run(
            ["docker", "exec", cid, "python", "-c", probe],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        roles[cid] = r.stdout.strip() if r.returncode == 0 else f"? {r.stderr[-200:]}"
    return roles


def one_leader(compose: Compose, count: int, timeout: float = 60) -> str:
    """Wait until ``count`` schedulers run, one ``leader`` and the others ``standby``; the
    leader's container id."""
    deadline = time.monotonic() + timeout
    while True:
        roles = scheduler_roles(compose)
        leaders = [cid for cid, role in roles.items() if role == "leader"]
        if sorted(roles.values()) == ["leader"] + ["standby"] * (count - 1):
            return leaders[0]
        assert time.monotonic() < deadline, f"not one leader of {count}: {roles}"
        time.sleep(0.5)


def test_the_active_schedulers_container_killed_and_the_standby_dispatches_within_10_s(
    ha_cluster: Compose,
) -> None:
    """Three rounds: kill the leader's container, time a job submitted then until it starts
    (the standby dispatched it and a worker claimed it), from the start of ``docker kill``
    (the lock goes with the process, before the command returns); start the killed
    container again (it stands by). A job without inputs is stored QUEUED: only its start
    shows that it was dispatched."""
    dispatched: list[float] = []
    kills: list[float] = []
    with httpx.Client(base_url=ha_cluster.url, timeout=10) as client:
        h = new_tenant_key(client, ha_cluster.admin_key, "failover")
        body = {"kernel": "montecarlo_pi", "params": {"samples": 1000}}
        for _ in range(3):
            leader = one_leader(ha_cluster, 2)
            t0 = time.monotonic()
            docker("kill", leader)  # a stop the restart policy leaves alone: the standby acts
            kills.append(time.monotonic() - t0)
            r = post_with_retries(client, "/v1/jobs", body, h)
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
            while client.get(f"/v1/jobs/{job_id}", headers=h).json()["state"] == "QUEUED":
                assert time.monotonic() - t0 < 30, "the standby never dispatched"
                time.sleep(0.05)
            dispatched.append(time.monotonic() - t0)
            done = wait_for_state(client, job_id, h, FINAL, timeout=120)
            assert done["state"] == "SUCCEEDED", done
            (survivor,) = ha_cluster.running("scheduler")
            assert scheduler_roles(ha_cluster) == {str(survivor["ID"]): "leader"}
            docker("start", leader)
    print(
        "\nthe active scheduler's container killed: a job submitted then started (dispatched "
        f"by the standby) {', '.join(f'{s:.2f}' for s in dispatched)} s after the start of "
        "docker kill "
        f"(which took {', '.join(f'{s:.2f}' for s in kills)} s)"
    )
    assert max(dispatched) < 10
    one_leader(ha_cluster, 2)


def test_500_jobs_through_a_gateway_kill_a_scheduler_crash_and_a_worker_kill(
    ha_cluster: Compose,
) -> None:
    ha_cluster.run(
        "up", "-d", "--wait", "--scale", "gateway=2", "--scale", "worker=2",
        "--scale", "scheduler=2", "--no-recreate",
    )  # fmt: skip
    assert len(ha_cluster.running("gateway")) == 2
    assert len(ha_cluster.running("worker")) == 2
    one_leader(ha_cluster, 2)
    faults: dict[int, Callable[[], object]] = {
        150: lambda: docker("kill", str(ha_cluster.running("gateway")[0]["ID"])),
        300: lambda: crash_container(one_leader(ha_cluster, 2)),  # the active scheduler
        400: lambda: docker("kill", str(ha_cluster.running("worker")[0]["ID"])),
    }
    with httpx.Client(base_url=ha_cluster.url, timeout=30) as client:
        h = new_tenant_key(client, ha_cluster.admin_key, "chaos")
        ids = set()
        for i in range(500):
            if i in faults:
                faults[i]()
            body: dict[str, Any] = {
                "kernel": "montecarlo_pi",
                "params": {"samples": 200_000, "seed": i},
            }
            headers = {**h, "Idempotency-Key": f"chaos-{i}"}  # a retried POST is the same job
            r = post_with_retries(client, "/v1/jobs", body, headers)
            assert r.status_code in (200, 201), r.text
            ids.add(r.json()["id"])
        assert len(ids) == 500
        t0 = time.monotonic()
        done = [wait_for_state(client, j, h, FINAL, timeout=600) for j in sorted(ids)]
    states = Counter(j["state"] for j in done)
    print(
        f"\n500 jobs through a gateway kill, the active scheduler's crash and a worker kill: "
        f"{dict(states)}, "
        f"the last final {time.monotonic() - t0:.1f} s after the last submit, "
        f"{len(RETRIED)} retried connections"
    )
    assert states == {"SUCCEEDED": 500}


FINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def crash_container(cid: str) -> None:
    """SIGKILL to the container's process (a crash: the restart policy applies)."""
    pid = docker("inspect", "-f", "{{.State.Pid}}", cid).strip()
    subprocess.run(["kill", "-9", pid], check=True)


def post_with_retries(
    client: httpx.Client, path: str, body: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    for attempt in range(5):
        try:
            r = client.post(path, json=body, headers=headers)
        except httpx.TransportError as exc:
            RETRIED.append(type(exc).__name__)
        else:
            if r.status_code < 500:
                return r
            RETRIED.append(str(r.status_code))
        time.sleep(0.2 * (attempt + 1))
    raise AssertionError(f"POST {path} failed 5 times: {RETRIED[-5:]}")
