"""Do the shared servers answer? One question each to PostgreSQL (a query), Redis (PING) and
RabbitMQ (the AMQP greeting), each within a few seconds, asked from threads of their own so
that no test's event loop is involved."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from shared.settings import CommonSettings, PostgresSettings

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
AMQP_METHOD_FRAME = 1  # the broker's first frame is the method frame Connection.Start


def servers_out(settings: CommonSettings, timeout_s: float) -> list[str]:
    """What is wrong with each server that did not answer within ``timeout_s``; empty when
    all answered."""
    pg, rabbit = settings.postgres, settings.rabbit
    redis = urlsplit(settings.redis.url)
    checks: dict[str, Callable[[], None]] = {
        f"PostgreSQL {pg.host}:{pg.port}": lambda: _postgres(
            pg.host, pg.port, pg.user, pg.password.get_secret_value(), timeout_s
        ),
        f"Redis {redis.hostname}:{redis.port or 6379}": lambda: _redis(
            redis.hostname or "127.0.0.1", redis.port or 6379, timeout_s
        ),
        f"RabbitMQ {rabbit.host}:{rabbit.port}": lambda: _rabbit(
            rabbit.host, rabbit.port, timeout_s
        ),
    }
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        futures = {name: pool.submit(check) for name, check in checks.items()}
        out = []
        for name, future in futures.items():
            error = future.exception()
            if error is not None:
                out.append(f"{name}: {type(error).__name__}: {error}")
        return out


# the name each check gives a server, as scripts/ensure-servers.sh knows it
_SCRIPT_NAMES = {"PostgreSQL": "postgres", "Redis": "redis", "RabbitMQ": "rabbitmq"}
ENSURE_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ensure-servers.sh"


def bring_back(out: list[str], timeout_s: float = 300) -> str:
    """Ask ``scripts/ensure-servers.sh`` to bring back the servers named in ``out`` (what
    :func:`servers_out` said), a hung RabbitMQ node included; what the script and the machine
    said (memory, disk, load), for the run's report."""
    names = sorted(
        {_SCRIPT_NAMES[o.split(" ", 1)[0]] for o in out if o.split(" ", 1)[0] in _SCRIPT_NAMES}
    )
    lines = [f"servers out: {'; '.join(out)}"]
    for probe in (["uptime"], ["free", "-m"], ["df", "-h", "/", "/var/lib"]):
        try:
            done = subprocess.run(probe, capture_output=True, text=True, timeout=10)
            lines.append(done.stdout.strip())
        except (OSError, subprocess.TimeoutExpired) as e:
            lines.append(f"{probe[0]}: {e}")
    try:
        done = subprocess.run(
            ["bash", str(ENSURE_SCRIPT), *names],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        lines.append(f"ensure-servers.sh {' '.join(names)} exited {done.returncode}:")
        lines.append((done.stdout + done.stderr).strip())
    except subprocess.TimeoutExpired:
        lines.append(f"ensure-servers.sh {' '.join(names)} did not end within {timeout_s:.0f}s")
    return "\n".join(lines)


def _postgres(host: str, port: int, user: str, password: str, timeout_s: float) -> None:
    async def query() -> None:
        async with asyncio.timeout(timeout_s):
            conn = await asyncpg.connect(
                host=host, port=port, user=user, password=password or None, database="postgres"
            )
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await conn.close()

    asyncio.run(query())


def _redis(host: str, port: int, timeout_s: float) -> None:
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(b"PING\r\n")
        answer = sock.recv(64)
    if not answer.startswith(b"+PONG"):
        raise ConnectionError(f"PING answered {answer!r}")


def _rabbit(host: str, port: int, timeout_s: float) -> None:
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(AMQP_HEADER)
        answer = sock.recv(1)
    if answer != bytes([AMQP_METHOD_FRAME]):
        raise ConnectionError(f"the AMQP greeting was answered with {answer!r}")


def unfinished_jobs(pg: PostgresSettings) -> dict[str, int]:
    """How many jobs of database ``pg.database`` are QUEUED or RUNNING, by state."""

    async def query() -> dict[str, int]:
        conn = await asyncpg.connect(
            host=pg.host,
            port=pg.port,
            user=pg.user,
            password=pg.password.get_secret_value() or None,
            database=pg.database,
        )
        try:
            rows = await conn.fetch(
                "SELECT state, count(*) AS n FROM jobs"
                " WHERE state IN ('QUEUED', 'RUNNING') GROUP BY state"
            )
        finally:
            await conn.close()
        return {f"jobs {r['state']}": int(r["n"]) for r in rows}

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(query())).result()


def unacked_messages(vhost: str) -> dict[str, int]:
    """The queues of ``vhost`` with messages delivered and not acknowledged, and how many."""
    exe = shutil.which("rabbitmqctl") or "rabbitmqctl"
    listed = subprocess.run(
        [
            exe,
            "-q",
            "list_queues",
            "-p",
            vhost,
            "--no-table-headers",
            "name",
            "messages_unacknowledged",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    counts = (line.rsplit(None, 1) for line in listed.splitlines() if line.strip())
    return {f"unacked in {name}": int(n) for name, n in counts if int(n)}
