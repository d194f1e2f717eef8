"""Services start in any order: with RabbitMQ and PostgreSQL unreachable a service stays up,
answers ``/healthz``, says in ``/readyz`` (503) what it waits for, and becomes ready by
itself once they answer. The dependencies are reached through TCP proxies that the test
opens late, so the shared servers keep running for everything else."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.settings import CommonSettings
from tests.datamover.harness import free_port
from tests.netfault import TcpProxy
from tests.processes import service_process


def closed_proxy(target_port: int) -> TcpProxy:
    """A proxy on a free port that nothing listens on until ``start()``."""
    proxy = TcpProxy(target_port)
    proxy.port = free_port()
    return proxy


class ThreadedProxy:
    """A ``TcpProxy`` on an event loop of its own (a thread), so that the test's loop and
    whatever earlier tests left running on it cannot slow the service's connections."""

    def __init__(self, target_port: int) -> None:
        self.proxy = closed_proxy(target_port)
        self.port = self.proxy.port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.started = False

    async def start(self) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop))
        self.started = True

    async def close(self) -> None:
        if self.started:
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self.proxy.stop(), self.loop)
            )
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def _readiness(c: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    r = await c.get("/readyz")
    return r.status_code, r.json()


async def _wait_for(
    c: httpx.AsyncClient,
    proc: subprocess.Popen[bytes],
    log: Path,
    want: Any,
    timeout: float = 150,  # the shared broker has been seen to stall for a minute
) -> tuple[int, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the service exited:\n" + log.read_text()[-3000:]
        try:
            got = await _readiness(c)
            if want(*got):
                return got
        except httpx.TransportError:
            pass  # not listening yet
        assert time.monotonic() < deadline, (
            f"last: {got if 'got' in locals() else None}\n" + log.read_text()[-4000:]
        )
        await asyncio.sleep(0.3)


@pytest.mark.parametrize("module", ["services.scheduler", "services.datamover", "services.worker"])
async def test_a_service_waits_for_its_dependencies_in_any_order(
    module: str, settings: CommonSettings, test_env: dict[str, str], tmp_path: Path
) -> None:
    rabbit = ThreadedProxy(settings.rabbit.port)
    postgres = ThreadedProxy(settings.postgres.port)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STRATUS_")},
        **test_env,
        "STRATUS_PORT": str(port),
        "STRATUS_RABBIT__PORT": str(rabbit.port),
        "STRATUS_POSTGRES__PORT": str(postgres.port),
        "STRATUS_LOG_LEVEL": "INFO",
        "STRATUS_STORAGE__LOCAL__ROOT": str(tmp_path / "local"),
        "STRATUS_STORAGE__ARCHIVE__ROOT": str(tmp_path / "archive"),
    }
    log = tmp_path / "service.log"
    try:
        with service_process(module, env, log, stop_s=30) as proc:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
                status, body = await _wait_for(c, proc, log, lambda s, _b: s == 503)
                assert body == {"status": "starting", "checks": {"rabbitmq": "waiting"}}
                assert (await c.get("/healthz")).status_code == 200  # alive meanwhile
                await asyncio.sleep(2)
                assert proc.poll() is None  # no crash while waiting

                await rabbit.start()  # the broker first; the database is still away
                status, body = await _wait_for(
                    c, proc, log, lambda _s, b: b["checks"] == {"postgres": "waiting"}
                )
                assert status == 503

                await postgres.start()
                status, body = await _wait_for(c, proc, log, lambda s, _b: s == 200)
                assert body["status"] == "ok"
                assert set(body["checks"]) >= {"postgres", "rabbitmq"}
                metrics = (await c.get("/metrics")).text  # each service shows its breakers
                assert 'stratus_circuit_state{circuit="rabbitmq"} 0.0' in metrics
                assert 'stratus_circuit_state{circuit="postgres"} 0.0' in metrics
    finally:
        for proxy in (rabbit, postgres):
            await proxy.close()
