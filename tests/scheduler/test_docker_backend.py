"""The ``docker`` backend.

Against a real Docker engine (skipped, saying why, where none answers): a compose-labelled
service of ``busybox`` containers is scaled up (stopped replicas started, then copies created
with the next container number) and down (``stop`` with a timeout), and counted.

Against an in-process model of the few Engine API calls it makes (always runs): the same
sequence, checking the requests it sends, so the logic is exercised where no engine exists.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.scheduler.backends.docker import NUMBER, PROJECT, SERVICE, DockerBackend
from services.scheduler.settings import DockerBackendSettings

SOCKET = "/var/run/docker.sock"


# --- a model of the Engine API ---------------------------------------------------------------
class FakeEngine:
    def __init__(self) -> None:
        self.containers: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []

    def add(self, labels: dict[str, str], state: str = "running") -> str:
        cid = uuid.uuid4().hex + uuid.uuid4().hex[:32]
        self.containers[cid] = {
            "Id": cid,
            "State": state,
            "Labels": labels,
            "Config": {"Image": "stratus:latest", "Cmd": ["python"], "Labels": labels},
            "HostConfig": {"Binds": ["data:/data"]},
            "NetworkSettings": {"Networks": {"stratus_default": {}}},
        }
        return cid

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v1.43")
        self.requests.append((request.method, path))
        if request.method == "GET" and path == "/containers/json":
            wanted = json.loads(request.url.params["filters"])["label"]
            found = [
                {k: c[k] for k in ("Id", "State", "Labels")}
                for c in self.containers.values()
                if all(f"{k}={v}" in wanted for k, v in c["Labels"].items() if k != NUMBER)
            ]
            return httpx.Response(200, json=found)
        if request.method == "POST" and path == "/containers/create":
            body = json.loads(request.content)
            cid = self.add(body["Labels"], state="created")
            assert body["HostConfig"] == {"Binds": ["data:/data"]}
            assert body["NetworkingConfig"]["EndpointsConfig"] == {
                "stratus_default": {"Aliases": [body["Labels"][SERVICE]]}
            }
            return httpx.Response(201, json={"Id": cid})
        cid, _, action = path.removeprefix("/containers/").partition("/")
        c = self.containers[cid]
        if action == "json":
            return httpx.Response(200, json=c)
        if action == "start":
            if c["State"] == "running":
                return httpx.Response(304)
            c["State"] = "running"
            return httpx.Response(204)
        if action == "stop":
            assert request.url.params["t"] == "30"
            c["State"] = "exited"
            return httpx.Response(204)
        return httpx.Response(404, json={"message": "no such thing"})


async def test_scaling_through_the_engine_api_model() -> None:
    engine = FakeEngine()
    labels = {PROJECT: "stratus", SERVICE: "worker"}
    first = engine.add({**labels, NUMBER: "1"})
    engine.add({**labels, NUMBER: "2"}, state="exited")
    engine.add({PROJECT: "stratus", SERVICE: "gateway", NUMBER: "1"})  # another service
    backend = DockerBackend(DockerBackendSettings(), transport=httpx.MockTransport(engine.handler))
    try:
        assert await backend.current("cpu") == 1
        assert await backend.current("cuda") == 0
        assert await backend.scale("cpu", 4, busy={}) == 4
        workers = [c for c in engine.containers.values() if c["Labels"][SERVICE] == "worker"]
        assert sorted(int(c["Labels"][NUMBER]) for c in workers) == [1, 2, 3, 4]
        assert all(c["State"] == "running" for c in workers)
        assert sum(r == ("POST", "/containers/create") for r in engine.requests) == 2
        assert await backend.current("cpu") == 4

        # the first replica is busy: the idle ones with the highest numbers go
        busy = {f"{first[:12]}-7": 1}
        assert await backend.scale("cpu", 1, busy=busy) == 1
        assert await backend.current("cpu") == 1  # stopping ones no longer count
        await backend.close()  # waits for the stop calls
        running = [c for c in workers if c["State"] == "running"]
        assert [c["Id"] for c in running] == [first]
    finally:
        await backend.close()


# --- a real engine ---------------------------------------------------------------------------
def _engine_answers() -> str | None:
    """None when an engine answers, else why not."""
    try:
        transport = httpx.HTTPTransport(uds=SOCKET)
        with httpx.Client(transport=transport, base_url="http://docker", timeout=3) as c:
            r = c.get("/_ping")
    except httpx.HTTPError as exc:
        return f"no Docker engine answers on {SOCKET} ({type(exc).__name__})"
    return None if r.status_code == 200 else f"{SOCKET} answered {r.status_code} to /_ping"


@pytest.fixture
async def engine_project() -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    why = _engine_answers()
    if why is not None:
        pytest.skip(why)
    project = f"stratus-test-{uuid.uuid4().hex[:8]}"
    transport = httpx.AsyncHTTPTransport(uds=SOCKET)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://docker/v1.43", timeout=120
    ) as c:
        r = await c.post("/images/create", params={"fromImage": "busybox", "tag": "latest"})
        if r.status_code != 200:
            pytest.skip(f"the engine cannot pull busybox: {r.status_code}")
        try:
            yield c, project
        finally:
            filters = json.dumps({"label": [f"{PROJECT}={project}"]})
            found = await c.get("/containers/json", params={"all": "1", "filters": filters})
            for ctr in found.json():
                await c.delete(f"/containers/{ctr['Id']}", params={"force": "1"})


async def test_scaling_a_compose_service_on_a_real_engine(
    engine_project: tuple[httpx.AsyncClient, str],
) -> None:
    c, project = engine_project
    labels = {PROJECT: project, SERVICE: "worker", NUMBER: "1"}
    created = await c.post(
        "/containers/create",
        params={"name": f"{project}-worker-1"},
        json={"Image": "busybox:latest", "Cmd": ["sleep", "600"], "Labels": labels},
    )
    assert created.status_code == 201, created.text
    await c.post(f"/containers/{created.json()['Id']}/start")
    settings = DockerBackendSettings(socket=SOCKET, project=project, stop_timeout_s=1)
    backend = DockerBackend(settings)
    try:
        assert await backend.current("cpu") == 1
        assert await backend.scale("cpu", 3, busy={}) == 3
        assert await backend.current("cpu") == 3
        assert await backend.scale("cpu", 1, busy={}) == 1
    finally:
        await backend.close()
    for _ in range(50):
        check = DockerBackend(settings)
        try:
            found = await check.containers("cpu")
            if sum(x["State"] == "running" for x in found) == 1:
                break
        finally:
            await check.close()
        await asyncio.sleep(0.2)
    assert len(found) == 3
    assert sorted(int(x["Labels"][NUMBER]) for x in found) == [1, 2, 3]
    assert [x["State"] for x in found].count("running") == 1
