"""Active/standby schedulers on the leader lock (``services.scheduler.leader``), as real
processes on a database of their own: exactly one dispatches; ``kill -9`` of the leader and
the standby dispatches within 10 s; PostgreSQL away and back and one leads again; a leader
cut off from PostgreSQL steps down before the lock can go to the standby.

Each scheduler reaches PostgreSQL through a TCP proxy of its own (``tests.netfault``), so the
test can take the server away from one or both of them while the server runs on."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scheduler.leader import LEADER_LOCK
from shared.db.models import Job, Tenant, Worker
from shared.events import utcnow
from shared.settings import CommonSettings
from tests.datamover.harness import free_port
from tests.factories import new_job, own_database
from tests.netfault import TcpProxy
from tests.processes import service_process

Sessions = async_sessionmaker[AsyncSession]
LEASE_S = 3.0  # the schedulers' leader.lease_s (check every 1 s, retry every 1 s)


@pytest.fixture(scope="module")
async def own(settings: CommonSettings) -> AsyncIterator[tuple[str, Sessions]]:
    async with own_database(settings, "leader", vhost=True) as own:
        yield own


class Scheduler:
    """One scheduler process behind its own proxy to PostgreSQL."""

    def __init__(self, name: str, proxy: TcpProxy, env: dict[str, str], tmp: Path) -> None:
        self.name = name
        self.proxy = proxy
        self.port = free_port()
        self.log = tmp / f"scheduler-{name}.log"
        self.env = {
            **env,
            "STRATUS_POSTGRES__HOST": "127.0.0.1",
            "STRATUS_POSTGRES__PORT": str(proxy.port),
            "STRATUS_PORT": str(self.port),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, stack: ExitStack) -> None:
        self.proc = stack.enter_context(service_process("services.scheduler", self.env, self.log))

    async def role(self) -> str | None:
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                r = await client.get(f"http://127.0.0.1:{self.port}/leader")
        except httpx.HTTPError:
            return None
        return str(r.json()["role"]) if r.status_code == 200 else None

    async def dispatched(self) -> int:
        """``stratus_scheduler_jobs_dispatched_total`` on its ``/metrics``."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            r = await client.get(f"http://127.0.0.1:{self.port}/metrics")
        assert r.status_code == 200
        for line in r.text.splitlines():
            if line.startswith("stratus_scheduler_jobs_dispatched_total "):
                return int(float(line.split()[1]))
        raise AssertionError("no stratus_scheduler_jobs_dispatched_total")

    def tail(self) -> str:
        return f"--- {self.name}:\n" + self.log.read_text()[-2500:]


async def wait_until(what: str, check: object, timeout: float, *logs: Scheduler) -> float:
    """Poll the async ``check`` until true; the seconds it took."""
    assert callable(check)
    t0 = time.monotonic()
    while not await check():
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout} s\n" + "\n".join(
            s.tail() for s in logs
        )
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


@pytest.fixture
def env(own: tuple[str, Sessions], test_env: dict[str, str]) -> dict[str, str]:
    name, _ = own
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("STRATUS_")},
        **test_env,
        "STRATUS_POSTGRES__DATABASE": name,
        "STRATUS_RABBIT__VHOST": name,
        "STRATUS_LOG_LEVEL": "INFO",
        "STRATUS_DISPATCH_INTERVAL_S": "0.2",
        "STRATUS_WORKER_TTL_S": "600",
        "STRATUS_LEADER__RETRY_S": "1",
        "STRATUS_LEADER__CHECK_S": "1",
        "STRATUS_LEADER__LEASE_S": str(LEASE_S),
    }


@pytest.fixture
async def tenant(own: tuple[str, Sessions]) -> uuid.UUID:
    _, db = own
    tid = uuid.uuid4()
    async with db() as session, session.begin():
        session.add(Tenant(id=tid, name=f"t{tid.hex[:8]}", weight=1, quotas={}, suspended=False))
        session.add(
            Worker(id=f"w-{tid.hex[:8]}", device="cpu", concurrency=256, heartbeat_at=utcnow())
        )
    return tid


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


async def submit(db: Sessions, tid: uuid.UUID, n: int) -> list[uuid.UUID]:
    jobs = [new_job(tid) for _ in range(n)]
    async with db() as session, session.begin():
        session.add_all(jobs)
    return [j.id for j in jobs]


async def dispatched(db: Sessions, ids: list[uuid.UUID]) -> int:
    async with db() as session:
        n = await session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.id.in_(ids), Job.dispatched_at.is_not(None))
        )
    return int(n or 0)


async def roles(*schedulers: Scheduler) -> list[str | None]:
    return list(await asyncio.gather(*(s.role() for s in schedulers)))


async def leader_and_standby(
    pa: TcpProxy, pb: TcpProxy, env: dict[str, str], tmp_path: Path, stack: ExitStack
) -> tuple[Scheduler, Scheduler]:
    """Scheduler a (through ``pa``) leading, then b (through ``pb``) standing by."""
    a, b = Scheduler("a", pa, env, tmp_path), Scheduler("b", pb, env, tmp_path)
    a.start(stack)
    await wait_until("a leads", lambda: _is(a, "leader"), 60, a)
    b.start(stack)
    await wait_until("b stands by", lambda: _is(b, "standby"), 60, b)
    return a, b


async def test_one_leader_dispatches_and_the_standby_takes_over_after_kill_9(
    own: tuple[str, Sessions],
    env: dict[str, str],
    tenant: uuid.UUID,
    stack: ExitStack,
    tmp_path: Path,
    settings: CommonSettings,
) -> None:
    _, db = own
    pg = settings.postgres.port
    async with TcpProxy.running(pg) as pa, TcpProxy.running(pg) as pb:
        a, b = await leader_and_standby(pa, pb, env, tmp_path, stack)

        # exactly one dispatches: every job through a, none through b
        ids = await submit(db, tenant, 20)
        await wait_until("20 dispatched", lambda: _all(db, ids), 30, a, b)
        assert (await a.dispatched(), await b.dispatched()) == (20, 0), a.tail() + b.tail()
        assert await roles(a, b) == ["leader", "standby"]

        # kill -9 the leader: the standby dispatches within 10 s
        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        ids = await submit(db, tenant, 5)
        took = await wait_until("b dispatches", lambda: _all(db, ids), 10, b)
        failover = time.monotonic() - killed
        print(f"\nfailover after kill -9 of the leader: the standby dispatched in {failover:.2f} s")
        assert took < 10
        assert await b.dispatched() == 5
        assert await b.role() == "leader"

        # a new scheduler stands by while b leads
        a2 = Scheduler("a2", pa, env, tmp_path)
        a2.start(stack)
        await wait_until("a2 stands by", lambda: _is(a2, "standby"), 60, a2)
        assert await roles(a2, b) == ["standby", "leader"]

        # PostgreSQL away for 3 s (every connection dropped, none accepted), then back
        await asyncio.gather(pa.stop(), pb.stop())
        await asyncio.sleep(LEASE_S + 1)
        assert await roles(a2, b) == ["standby", "standby"], a2.tail() + b.tail()
        await asyncio.gather(pa.start(), pb.start())
        back = time.monotonic()
        await wait_until("one leads again", lambda: _one_leader(a2, b), 30, a2, b)
        print(f"PostgreSQL back: a leader again after {time.monotonic() - back:.2f} s")
        ids = await submit(db, tenant, 5)
        await wait_until("dispatch after PostgreSQL came back", lambda: _all(db, ids), 30, a2, b)
        # and it stays at one: a few more checks of both
        for _ in range(10):
            assert sorted(map(str, await roles(a2, b))) == ["leader", "standby"]
            await asyncio.sleep(0.2)
        assert await _lock_holders(db) == 1


async def test_a_leader_cut_off_steps_down_before_the_standby_takes_over(
    own: tuple[str, Sessions],
    env: dict[str, str],
    tenant: uuid.UUID,
    stack: ExitStack,
    tmp_path: Path,
    settings: CommonSettings,
) -> None:
    _, db = own
    pg = settings.postgres.port
    async with TcpProxy.running(pg) as pa, TcpProxy.running(pg) as pb:
        a, b = await leader_and_standby(pa, pb, env, tmp_path, stack)

        # the network between a and PostgreSQL stalls: the server still holds a's session
        # (and the lock), and a steps down within its lease while b still stands by
        pa.stall()
        stalled = time.monotonic()
        await wait_until("a steps down", lambda: _is(a, "standby"), LEASE_S + 3, a)
        print(f"\nleader cut off: stepped down after {time.monotonic() - stalled:.2f} s")
        assert await b.role() == "standby"
        assert await _lock_holders(db) == 1  # still a's session, whose loops have stopped
        dispatched_before = await a.dispatched()
        ids = await submit(db, tenant, 3)
        await asyncio.sleep(1.0)
        assert await dispatched(db, ids) == 0  # nobody leads: nobody dispatches
        # the server drops the silent session (here: the proxy's sockets close): b takes over
        pa.cut()
        took = await wait_until("b leads", lambda: _is(b, "leader"), 10, b)
        await wait_until("b dispatches", lambda: _all(db, ids), 10, b)
        print(f"the lock freed: the standby led after {took:.2f} s")
        assert await b.dispatched() == 3
        pa.resume()
        await wait_until("a stands by again", lambda: _is(a, "standby"), 30, a)
        assert await roles(a, b) == ["standby", "leader"]
        assert await a.dispatched() == dispatched_before  # a dispatched nothing since


async def _is(s: Scheduler, role: str) -> bool:
    return await s.role() == role


async def _one_leader(*schedulers: Scheduler) -> bool:
    return (await roles(*schedulers)).count("leader") == 1


async def _all(db: Sessions, ids: list[uuid.UUID]) -> bool:
    return await dispatched(db, ids) == len(ids)


async def _lock_holders(db: Sessions) -> int:
    async with db() as session:
        n = await session.scalar(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND ((classid::bigint << 32) | objid::bigint) = :key"
            ),
            {"key": LEADER_LOCK},
        )
    return int(n or 0)
