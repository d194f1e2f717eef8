"""``local`` backend: worker processes of this host, run by supervisord.

Each pool is one supervisord program with ``numprocs`` = the pool's maximum and
``autostart=false`` (``tools.cluster`` writes it); scaling is ``startProcess`` /
``stopProcess`` over supervisord's XML-RPC socket. supervisord stays the parent of every
worker: it restarts one that crashes, and a scheduler that crashes or restarts orphans
nothing and doubles nothing, because it counts the processes supervisord runs rather than
remembering what it started. Stopping sends SIGTERM: the worker stops taking work, finishes
its running jobs for ``STRATUS_SHUTDOWN_GRACE_S`` and hands back the rest.
"""

from __future__ import annotations

import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from services.scheduler.backends import BackendError
from services.scheduler.settings import LocalBackendSettings
from shared.logging import get_logger

log = get_logger(__name__)


class SupervisorFault(BackendError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"supervisord fault {code}: {message}")
        self.code = code


UP = {"STARTING", "RUNNING", "BACKOFF"}  # started and not being stopped
STARTABLE = {"STOPPED", "EXITED", "FATAL"}
ALREADY_STARTED, NOT_RUNNING = 60, 70


@dataclass(frozen=True)
class Process:
    name: str  # worker_00 ...
    group: str  # the program: worker
    state: str
    pid: int

    @property
    def namespec(self) -> str:
        return f"{self.group}:{self.name}"

    def runs(self, worker_name: str) -> bool:
        """Whether ``worker_name`` (``<prefix>-NN-<pid>``, see ``tools.supervision``) is this
        process."""
        return self.pid > 0 and worker_name.endswith(f"-{self.pid}")


class SupervisorClient:
    """supervisord's XML-RPC interface over its unix socket, without blocking the loop."""

    def __init__(self, socket: str, *, timeout_s: float = 10.0) -> None:
        transport = httpx.AsyncHTTPTransport(uds=socket)
        self._http = httpx.AsyncClient(transport=transport, timeout=timeout_s)

    async def call(self, method: str, *args: Any) -> Any:
        body = xmlrpc.client.dumps(args, f"supervisor.{method}", allow_none=True)
        try:
            r = await self._http.post(
                "http://localhost/RPC2", content=body, headers={"Content-Type": "text/xml"}
            )
            r.raise_for_status()
        except httpx.HTTPError as exc:
            raise BackendError(f"supervisord does not answer: {exc!r}") from exc
        try:  # supervisord's own answer, over a socket only this user can open (mode 0700)
            result, _ = xmlrpc.client.loads(r.content)
        except xmlrpc.client.Fault as fault:  # e.g. SHUTDOWN_STATE while it stops
            raise SupervisorFault(fault.faultCode, fault.faultString) from fault
        return result[0]

    async def processes(self) -> list[Process]:
        infos = await self.call("getAllProcessInfo")
        return [
            Process(str(i["name"]), str(i["group"]), str(i["statename"]), int(i["pid"]))
            for i in infos
        ]

    async def start(self, namespec: str) -> None:
        await self._ignoring(ALREADY_STARTED, "startProcess", namespec, False)

    async def stop(self, namespec: str) -> None:
        await self._ignoring(NOT_RUNNING, "stopProcess", namespec, False)

    async def _ignoring(self, code: int, method: str, *args: Any) -> None:
        try:
            await self.call(method, *args)
        except SupervisorFault as fault:
            if fault.code != code:
                raise

    async def close(self) -> None:
        await self._http.aclose()


def _number(p: Process) -> int:
    digits = p.name.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else 0


class LocalBackend:
    name = "local"
    acts = True

    def __init__(self, settings: LocalBackendSettings) -> None:
        self.settings = settings
        self.client = SupervisorClient(settings.supervisor_socket)
        self.programs = {"cpu": settings.cpu_program, "cuda": settings.cuda_program}

    async def _members(self, pool: str) -> list[Process]:
        program = self.programs[pool]
        return sorted((p for p in await self.client.processes() if p.group == program), key=_number)

    async def current(self, pool: str) -> int:
        return sum(p.state in UP for p in await self._members(pool))

    async def scale(self, pool: str, target: int, *, busy: Mapping[str, int]) -> int:
        members = await self._members(pool)
        up = [p for p in members if p.state in UP]
        if len(up) < target:
            startable = [p for p in members if p.state in STARTABLE][: target - len(up)]
            if len(up) + len(startable) < target:
                log.warning(
                    "pool_program_too_small",
                    pool=pool,
                    program=self.programs[pool],
                    processes=len(members),
                    target=target,
                )
            for p in startable:
                await self.client.start(p.namespec)
            return len(up) + len(startable)
        for p in self._least_busy(up, busy)[: len(up) - target]:
            await self.client.stop(p.namespec)
        return min(len(up), target)

    @staticmethod
    def _least_busy(up: list[Process], busy: Mapping[str, int]) -> list[Process]:
        """Idle workers first, then the least busy; the highest-numbered among equals."""

        def load(p: Process) -> int:
            return sum(n for name, n in busy.items() if p.runs(name))

        return sorted(up, key=lambda p: (load(p), -_number(p)))

    async def close(self) -> None:
        await self.client.close()
