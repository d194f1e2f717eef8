"""Two gateways behind HAProxy (deploy/docker/compose.ha.yml): when one gateway's container is
killed, the clients see at most a retried connection."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.docker.conftest import REPO, Compose, docker, start_compose, stop_compose

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
