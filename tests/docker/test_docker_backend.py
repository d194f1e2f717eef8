"""The scheduler's ``docker`` autoscale backend against the real engine (the Engine API over
its unix socket): a compose-labelled service of containers of the offline base image is scaled
up (a stopped replica started, then copies created with the next container number) and down
(``stop`` with a timeout), and counted. Debian's engine (20.10) speaks API 1.41, older than the
backend's configured 1.43: the backend falls back to the engine's version.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.scheduler.backends.docker import NUMBER, PROJECT, SERVICE, DockerBackend
from services.scheduler.settings import DockerBackendSettings

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

SOCKET = "/var/run/docker.sock"
IMAGE = "stratus-offline/base:latest"


@pytest.fixture
async def engine_project(
    docker_images: dict[str, float],
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    project = f"stratus-test-{uuid.uuid4().hex[:8]}"
    transport = httpx.AsyncHTTPTransport(uds=SOCKET)
    async with httpx.AsyncClient(transport=transport, base_url="http://docker", timeout=120) as c:
        try:
            yield c, project
        finally:
            filters = json.dumps({"label": [f"{PROJECT}={project}"]})
            found = await c.get("/containers/json", params={"all": "1", "filters": filters})
            for ctr in found.json():
                await c.delete(f"/containers/{ctr['Id']}", params={"force": "1"})
            await c.delete(f"/networks/{project}_default")


async def test_scaling_a_compose_service_on_the_real_engine(
    engine_project: tuple[httpx.AsyncClient, str],
) -> None:
    c, project = engine_project
    labels = {PROJECT: project, SERVICE: "worker"}
    network = f"{project}_default"  # a network of the project's own, as compose makes
    made = await c.post("/networks/create", json={"Name": network, "Labels": {PROJECT: project}})
    assert made.status_code == 201, made.text
    ids = []
    for number in (1, 2):
        created = await c.post(
            "/containers/create",
            params={"name": f"{project}-worker-{number}"},
            json={
                "Image": IMAGE,
                "Cmd": ["sleep", "600"],
                "Labels": {**labels, NUMBER: str(number)},
                "StopSignal": "SIGKILL",
                "HostConfig": {"NetworkMode": network},
                "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": ["worker"]}}},
            },
        )
        assert created.status_code == 201, created.text
        ids.append(created.json()["Id"])
    for cid in ids:
        assert (await c.post(f"/containers/{cid}/start")).status_code == 204
    stopped = await c.post(f"/containers/{ids[1]}/stop", params={"t": "0"})
    assert stopped.status_code == 204  # replica 2 exited: the backend starts it again first
    settings = DockerBackendSettings(socket=SOCKET, project=project, stop_timeout_s=1)
    assert settings.api_version == "v1.43"  # newer than Debian's engine: the fallback runs
    backend = DockerBackend(settings)
    try:
        assert await backend.current("cpu") == 1
        assert await backend.scale("cpu", 4, busy={}) == 4
        assert await backend.current("cpu") == 4
        found = await backend.containers("cpu")
        assert sorted(int(x["Labels"][NUMBER]) for x in found) == [1, 2, 3, 4]
        assert {x["Id"] for x in found} >= set(ids)  # replica 2 started again, not copied
        for x in found:  # the copies joined the project's network under the service's name
            inspected = (await c.get(f"/v1.41/containers/{x['Id']}/json")).json()
            endpoint = inspected["NetworkSettings"]["Networks"][network]
            assert "worker" in (endpoint.get("Aliases") or []), endpoint
        assert all(x["State"] == "running" for x in found), [x["State"] for x in found]
        # replica 1 is busy: the idle ones with the highest numbers are stopped
        assert await backend.scale("cpu", 1, busy={f"{ids[0][:12]}-1": 1}) == 1
    finally:
        await backend.close()  # waits for the stop calls
    for _ in range(100):
        check = DockerBackend(settings)
        try:
            found = await check.containers("cpu")
        finally:
            await check.close()
        if sum(x["State"] == "running" for x in found) == 1:
            break
        await asyncio.sleep(0.2)
    assert len(found) == 4
    running = [x for x in found if x["State"] == "running"]
    assert [x["Id"] for x in running] == [ids[0]]
