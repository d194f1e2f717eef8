"""The ``local`` backend against a real supervisord (stand-in worker processes that only
sleep): it counts what supervisord runs, starts the lowest-numbered stopped processes, stops
the least busy ones, a second backend (a restarted scheduler) sees the same pool, and a
crashed process is restarted by supervisord without the backend doubling it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.scheduler.backends import BackendError
from services.scheduler.backends.local import LocalBackend, SupervisorClient
from services.scheduler.settings import LocalBackendSettings
from tools.supervision import (
    MARKER_VAR,
    Supervisor,
    kill_all,
    marked_pids,
    marker_for,
    section,
    socket_path,
)


@pytest.fixture
def supervisord(tmp_path: Path) -> Iterator[Path]:
    sock = socket_path(tmp_path)
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        section("unix_http_server", {"file": str(sock), "chmod": "0700"})
        + section(
            "supervisord",
            {
                "logfile": str(tmp_path / "supervisord.log"),
                "pidfile": str(tmp_path / "supervisord.pid"),
                "childlogdir": str(tmp_path),
            },
        )
        + section(
            "rpcinterface:supervisor",
            {"supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"},
        )
        + section(
            "program:worker",
            {
                "command": "/bin/sleep 600",
                "process_name": "%(program_name)s_%(process_num)02d",
                "numprocs": "3",
                "autostart": "false",
                "autorestart": "true",
                "startsecs": "0",
                "stopsignal": "TERM",
            },
        )
    )
    marker = marker_for(tmp_path)
    env = {**os.environ, MARKER_VAR: marker}
    subprocess.run(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
        env=env,
        check=True,
        timeout=30,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            if Supervisor(sock, timeout=2).state() == "RUNNING":
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "supervisord did not start"
        time.sleep(0.1)
    try:
        yield sock
    finally:
        with contextlib.suppress(OSError):
            Supervisor(sock, timeout=5).shutdown()
        time.sleep(0.5)
        kill_all(marked_pids(marker))


def _backend(sock: Path) -> LocalBackend:
    return LocalBackend(LocalBackendSettings(supervisor_socket=str(sock)))


async def _pids(sock: Path) -> dict[str, int]:
    client = SupervisorClient(str(sock))
    try:
        return {p.name: p.pid for p in await client.processes() if p.state == "RUNNING"}
    finally:
        await client.close()


async def _settled(sock: Path, count: int) -> dict[str, int]:
    for _ in range(100):
        pids = await _pids(sock)
        if len(pids) == count:
            return pids
        await asyncio.sleep(0.1)
    raise AssertionError(f"not {count} running: {pids}")


async def test_scale_up_down_least_busy_and_a_restarted_scheduler(supervisord: Path) -> None:
    backend = _backend(supervisord)
    try:
        assert await backend.current("cpu") == 0
        assert await backend.current("cuda") == 0  # no cuda program: an empty pool
        assert await backend.scale("cpu", 2, busy={}) == 2
        assert set(await _settled(supervisord, 2)) == {"worker_00", "worker_01"}
        assert await backend.scale("cpu", 3, busy={}) == 3
        pids = await _settled(supervisord, 3)
        assert await backend.current("cpu") == 3

        # worker_02 is busy, worker_00 and worker_01 idle: the highest idle one goes first
        busy = {f"host-worker-02-{pids['worker_02']}": 1}
        assert await backend.scale("cpu", 2, busy=busy) == 2
        assert set(await _settled(supervisord, 2)) == {"worker_00", "worker_02"}
        assert await backend.current("cpu") == 2

        # a restarted scheduler: a new backend counts what runs, starts nothing twice
        again = _backend(supervisord)
        try:
            assert await again.current("cpu") == 2
            assert await again.scale("cpu", 2, busy={}) == 2
            assert set(await _settled(supervisord, 2)) == {"worker_00", "worker_02"}
        finally:
            await again.close()

        # a crash: supervisord restarts it, the pool stays at 2 (never 3)
        os.kill(pids["worker_00"], signal.SIGKILL)
        for _ in range(100):
            now = await _pids(supervisord)
            if now.get("worker_00") not in (None, pids["worker_00"]):
                break
            assert await backend.current("cpu") == 2  # BACKOFF/STARTING still count
            await asyncio.sleep(0.05)
        assert set(await _settled(supervisord, 2)) == {"worker_00", "worker_02"}

        # more than the program has: it starts what there is, and says so
        assert await backend.scale("cpu", 5, busy={}) == 3
        await _settled(supervisord, 3)
        assert await backend.scale("cpu", 0, busy={}) == 0
        await _settled(supervisord, 0)
    finally:
        await backend.close()


async def test_no_supervisord_is_a_backend_error(tmp_path: Path) -> None:
    backend = _backend(tmp_path / "nothing.sock")
    try:
        with pytest.raises(BackendError):
            await backend.current("cpu")
    finally:
        await backend.close()
