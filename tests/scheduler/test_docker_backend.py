"""The ``docker`` backend.

Against an in-process model of the few Engine API calls it makes: scaling up (stopped replicas
started, then copies created with the next container number) and down (``stop`` with a
timeout), checking the requests it sends, and the fall back to an older engine's API version.
The same against the real engine is in the Docker stage (tests/docker/test_docker_backend.py).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

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


async def test_an_older_engine_is_spoken_to_in_its_own_api_version() -> None:
    engine = FakeEngine()
    engine.add({PROJECT: "stratus", SERVICE: "worker", NUMBER: "1"})
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path.startswith("/v1.43/"):
            message = "client version 1.43 is too new. Maximum supported API version is 1.41"
            return httpx.Response(400, json={"message": message})
        request.url = request.url.copy_with(path=request.url.path.replace("/v1.41", "/v1.43"))
        return engine.handler(request)

    backend = DockerBackend(DockerBackendSettings(), transport=httpx.MockTransport(handler))
    try:
        assert await backend.current("cpu") == 1
        assert await backend.current("cpu") == 1
    finally:
        await backend.close()
    assert [p.split("/")[1] for p in seen] == ["v1.43", "v1.41", "v1.41"]
