"""``docker`` backend: the compose project's worker service, through the Docker Engine API
(httpx over the engine's unix socket; no Docker SDK).

A pool is a compose service (``worker``, ``cuda-worker``). Scaling up starts the service's
stopped containers first, then creates more the way ``docker compose up --scale`` does: a
copy of an existing replica's configuration with the next container number. Scaling down
stops the least busy running replicas with ``POST /containers/{id}/stop?t=``: SIGTERM, the
worker's graceful shutdown, SIGKILL only after ``stop_timeout_s``. Stopped containers are
kept for the next scale-up; the engine's restart policy (``unless-stopped``) restarts a
crashed worker but not one the autoscaler stopped.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Any

import httpx

from services.scheduler.backends import BackendError
from services.scheduler.settings import DockerBackendSettings
from shared.logging import get_logger

log = get_logger(__name__)

PROJECT = "com.docker.compose.project"
SERVICE = "com.docker.compose.service"
NUMBER = "com.docker.compose.container-number"
UP = {"running", "restarting", "created"}
DEFAULT_NETWORKS = {"bridge", "host", "none"}


class DockerBackend:
    name = "docker"
    acts = True

    def __init__(
        self, settings: DockerBackendSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self.services = {"cpu": settings.cpu_service, "cuda": settings.cuda_service}
        self._http = httpx.AsyncClient(
            transport=transport or httpx.AsyncHTTPTransport(uds=settings.socket),
            base_url=f"http://docker/{settings.api_version}",
            timeout=30.0,
        )
        self._stopping: dict[str, asyncio.Task[None]] = {}  # container id -> its stop call

    async def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = await self._http.request(method, path, **kwargs)
            older = _older_api(r, self.settings.api_version)
            if older is not None:
                # an engine older than the configured API version (Debian's docker.io 20.10
                # speaks 1.41): speak its version from now on
                log.info("docker_api_version", configured=self.settings.api_version, engine=older)
                self._http.base_url = httpx.URL(f"http://docker/{older}")
                r = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise BackendError(f"the Docker engine does not answer: {exc!r}") from exc
        if r.status_code == 304:  # already started / already stopped
            return None
        if r.status_code >= 400:
            raise BackendError(f"{method} {path}: {r.status_code} {r.text[:200]}")
        return r.json() if r.content else None

    async def containers(self, pool: str) -> list[dict[str, Any]]:
        labels = [f"{PROJECT}={self.settings.project}", f"{SERVICE}={self.services[pool]}"]
        found = await self._api(
            "GET", "/containers/json", params={"all": "1", "filters": json.dumps({"label": labels})}
        )
        return sorted(found or [], key=_number)

    def _up(self, c: dict[str, Any]) -> bool:
        return c.get("State") in UP and c["Id"] not in self._stopping

    async def current(self, pool: str) -> int:
        return sum(self._up(c) for c in await self.containers(pool))

    async def scale(self, pool: str, target: int, *, busy: Mapping[str, int]) -> int:
        found = await self.containers(pool)
        up = [c for c in found if self._up(c)]
        if len(up) >= target:
            for c in _least_busy(up, busy)[: len(up) - target]:
                self._stop_later(c["Id"])
            return min(len(up), target)
        needed = target - len(up)
        stopped = [c for c in found if not self._up(c) and c["Id"] not in self._stopping]
        for c in stopped[:needed]:
            await self._api("POST", f"/containers/{c['Id']}/start")
        needed -= min(needed, len(stopped))
        if needed:
            if not found:
                raise BackendError(
                    f"no container of compose service {self.services[pool]!r} to copy: "
                    "start the service once (docker compose up)"
                )
            await self._create(found, needed)
        return target

    async def _create(self, found: list[dict[str, Any]], count: int) -> None:
        template = await self._api("GET", f"/containers/{found[0]['Id']}/json")
        number = max((_number(c) for c in found), default=0)
        for _ in range(count):
            number += 1
            body = replica_of(template, number)
            name = f"{self.settings.project}-{template['Config']['Labels'][SERVICE]}-{number}"
            created = await self._api(
                "POST", "/containers/create", params={"name": name}, json=body
            )
            await self._api("POST", f"/containers/{created['Id']}/start")
            log.info("docker_replica_created", container=name)

    def _stop_later(self, container_id: str) -> None:
        async def stop() -> None:
            try:
                t = self.settings.stop_timeout_s
                await self._api(
                    "POST", f"/containers/{container_id}/stop", params={"t": str(t)}, timeout=t + 30
                )
            except BackendError as exc:
                log.warning("docker_stop_failed", container=container_id, error=str(exc))
            finally:
                self._stopping.pop(container_id, None)

        self._stopping[container_id] = asyncio.create_task(stop(), name=f"stop-{container_id}")

    async def close(self) -> None:
        if self._stopping:
            await asyncio.gather(*self._stopping.values(), return_exceptions=True)
        await self._http.aclose()


def replica_of(template: dict[str, Any], number: int) -> dict[str, Any]:
    """A ``POST /containers/create`` body for replica ``number`` of the template's service."""
    config = template["Config"]
    labels = {**config.get("Labels", {}), NUMBER: str(number)}
    networks = template.get("NetworkSettings", {}).get("Networks", {}) or {}
    service = labels.get(SERVICE, "")
    return {
        "Image": config["Image"],
        "Cmd": config.get("Cmd"),
        "Entrypoint": config.get("Entrypoint"),
        "Env": config.get("Env"),
        "User": config.get("User", ""),
        "WorkingDir": config.get("WorkingDir", ""),
        "Labels": labels,
        "Healthcheck": config.get("Healthcheck"),
        "StopSignal": config.get("StopSignal"),
        "HostConfig": template.get("HostConfig", {}),
        "NetworkingConfig": {
            "EndpointsConfig": {
                # the engine's default networks take no aliases (compose's networks are its own)
                net: {} if net in DEFAULT_NETWORKS else {"Aliases": [service]}
                for net in networks
            }
        },
    }


_TOO_NEW = re.compile(r"is too new\. Maximum supported API version is (\d+\.\d+)")


def _older_api(r: httpx.Response, configured: str) -> str | None:
    """``v1.41`` when the engine refused the configured version as too new and named its own."""
    if r.status_code != 400:
        return None
    match = _TOO_NEW.search(r.text)
    if match is None or f"v{match.group(1)}" == configured:
        return None
    return f"v{match.group(1)}"


def _number(c: dict[str, Any]) -> int:
    labels = c.get("Labels") or c.get("Config", {}).get("Labels") or {}
    value = str(labels.get(NUMBER, "0"))
    return int(value) if value.isdigit() else 0


def _least_busy(up: list[dict[str, Any]], busy: Mapping[str, int]) -> list[dict[str, Any]]:
    """Idle replicas first (a worker's default name starts with its container's hostname,
    the first 12 characters of the container id), the highest-numbered among equals."""

    def load(c: dict[str, Any]) -> int:
        return sum(n for name, n in busy.items() if name.startswith(c["Id"][:12]))

    return sorted(up, key=lambda c: (load(c), -_number(c)))
