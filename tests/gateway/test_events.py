"""``GET /v1/events`` against two real gateway processes on one database: resume after a
disconnect, on the other gateway and after a restart with no gap and no duplicate; tenants
isolated; ``?job=``; keep-alive comments; a transaction that holds a lower id and commits
after a higher one; 422 for a bad resume position. Events are made by writing the rows that
the services write (``job_events``, ``migrations``), so every id is known to the test."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Job, JobEvent, Migration
from shared.jobs.arrays import element_id, public_id
from shared.settings import CommonSettings
from tests.conftest import ADMIN_KEY
from tests.datamover.harness import free_port
from tests.factories import new_array, new_job
from tests.processes import service_process
from tests.tiers import disk_tiers

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
KEEP_ALIVE_S = 0.5  # the gateways' STRATUS_EVENTS_KEEP_ALIVE_S
POLL_S = 1.0  # their STRATUS_EVENTS_POLL_S
ARRIVAL_S = 30.0  # the most an event may take to arrive on this loaded machine

pytestmark = pytest.mark.timeout(300)


@dataclass
class Gateway:
    url: str
    env: dict[str, str]
    log: Path
    proc: Any = None
    processes: ExitStack = field(default_factory=ExitStack)  # every start, stopped at the end

    def start(self) -> None:
        self.processes.enter_context(running(self))


def _ready(gw: Gateway) -> None:
    import time

    deadline = time.monotonic() + 90
    while True:
        assert gw.proc.poll() is None, gw.log.read_text()[-3000:]
        try:
            if httpx.get(f"{gw.url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the gateway was not ready within 90 s"
        time.sleep(0.2)


@contextmanager
def running(gw: Gateway) -> Iterator[Gateway]:
    with service_process("services.gateway", gw.env, gw.log, stop_s=15) as proc:
        gw.proc = proc
        _ready(gw)
        yield gw


def _gateway(test_env: dict[str, str], root: Path, name: str) -> Gateway:
    port = free_port()
    env = {
        **os.environ,
        **test_env,
        "STRATUS_PORT": str(port),
        **disk_tiers(root),
        "STRATUS_EVENTS_KEEP_ALIVE_S": str(KEEP_ALIVE_S),
        "STRATUS_EVENTS_POLL_S": str(POLL_S),
    }
    return Gateway(f"http://127.0.0.1:{port}", env, root / f"{name}.log")


@pytest.fixture(scope="module")
def gateways(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway]]:
    root = tmp_path_factory.mktemp("events-gateways")
    a, b = _gateway(test_env, root, "a"), _gateway(test_env, root, "b")
    with a.processes, b.processes:
        a.start()
        b.start()
        yield a, b


@dataclass
class Tenant:
    id: uuid.UUID
    headers: dict[str, str]
    key_id: str = ""


async def make_tenant(url: str) -> Tenant:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        r = await c.post("/v1/tenants", json={"name": f"ev-{uuid.uuid4().hex[:10]}"}, headers=ADMIN)
        assert r.status_code == 201, r.text
        tid = r.json()["id"]
        k = await c.post(f"/v1/tenants/{tid}/keys", json={"name": "k"}, headers=ADMIN)
        assert k.status_code == 201, k.text
        key = k.json()
        return Tenant(uuid.UUID(tid), {"Authorization": f"Bearer {key['key']}"}, key["id"])


# --- writing events as the services do -------------------------------------------------


async def add_job(sessions: async_sessionmaker[AsyncSession], tenant: Tenant) -> uuid.UUID:
    async with sessions() as s, s.begin():
        job = new_job(tenant.id)
        s.add(job)
    return job.id


async def transition(
    sessions: async_sessionmaker[AsyncSession], job_id: uuid.UUID, to_state: str, n: int = 1
) -> list[int]:
    """``n`` job_events rows of ``job_id`` in one transaction (the tenant left to the
    trigger, as a writer that does not name it); their ids."""
    async with sessions() as s, s.begin():
        rows = [
            JobEvent(job_id=job_id, attempt=i, from_state="QUEUED", to_state=to_state)
            for i in range(n)
        ]
        s.add_all(rows)
        await s.flush()
        return [r.id for r in rows]


async def last_id(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as s:
        got = await s.execute(text("SELECT coalesce(max(id), 0) FROM job_events"))
        return int(got.scalar_one())


# --- reading the stream -----------------------------------------------------------------


@dataclass
class Sse:
    events: list[dict[str, Any]] = field(default_factory=list)
    comments: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # the server closed it

    @property
    def ids(self) -> list[int]:
        return [int(e["id"]) for e in self.events]


@asynccontextmanager
async def stream(
    url: str, tenant: Tenant, *, params: dict[str, str] | None = None, last: int | None = None
) -> AsyncIterator[tuple[Sse, Any]]:
    """An open stream: what it read so far, and ``read(n)`` that waits for ``n`` more events
    (at most ``ARRIVAL_S``)."""
    headers = dict(tenant.headers)
    if last is not None:
        headers["Last-Event-ID"] = str(last)
    seen = Sse()
    async with (
        httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(ARRIVAL_S)) as c,
        c.stream("GET", "/v1/events", params=params, headers=headers) as r,
    ):
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        arrived: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def pump() -> None:  # a task of its own: a read that times out loses nothing
            current: dict[str, Any] = {}
            async for line in r.aiter_lines():
                if line.startswith(":"):
                    seen.comments += 1
                elif not line:
                    if current:
                        current["data"] = json.loads(current["data"])
                        arrived.put_nowait(current)
                    current = {}
                else:
                    name, _, value = line.partition(": ")
                    current[name] = value
            seen.ended.set()

        async def read(n: int, within: float = ARRIVAL_S) -> list[dict[str, Any]]:
            start = len(seen.events)
            async with asyncio.timeout(within):
                while len(seen.events) < start + n:
                    seen.events.append(await arrived.get())
            return seen.events[start:]

        pumping = asyncio.ensure_future(pump())
        try:
            yield seen, read
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await pumping


async def nothing_more(read: Any, within: float) -> None:
    with pytest.raises(TimeoutError):
        await read(1, within=within)


# --- the tests ----------------------------------------------------------------------------


async def test_resume_after_a_disconnect_has_no_gap_and_no_duplicate(
    gateways: tuple[Gateway, Gateway], sessions: async_sessionmaker[AsyncSession]
) -> None:
    a, _ = gateways
    tenant = await make_tenant(a.url)
    job = await add_job(sessions, tenant)
    start = await last_id(sessions)
    first = await transition(sessions, job, "RUNNING", 5)
    async with stream(a.url, tenant, params={"after": str(start)}) as (_seen, read):
        got = await read(3)
    assert [int(e["id"]) for e in got] == first[:3]
    second = await transition(sessions, job, "SUCCEEDED", 4)
    async with stream(a.url, tenant, last=first[2]) as (seen, read):
        await read(6)
        await nothing_more(read, within=2 * POLL_S)
    assert seen.ids == first[3:] + second
    assert [e["event"] for e in seen.events] == ["job.state"] * 6
    data = seen.events[-1]["data"]
    assert data["job_id"] == str(job)
    assert data["state"] == "SUCCEEDED"
    assert data["attempt"] == 3
    assert "at" in data


async def test_two_gateways_and_a_restart_serve_one_sequence(
    gateways: tuple[Gateway, Gateway], sessions: async_sessionmaker[AsyncSession]
) -> None:
    a, b = gateways
    tenant = await make_tenant(a.url)
    job = await add_job(sessions, tenant)
    start = await last_id(sessions)
    async with (
        stream(a.url, tenant, params={"after": str(start)}) as (on_a, read_a),
        stream(b.url, tenant, params={"after": str(start)}) as (on_b, read_b),
    ):
        made = await transition(sessions, job, "RUNNING", 3)
        await read_a(3)
        await read_b(3)
    assert on_a.ids == on_b.ids == made
    later = await transition(sessions, job, "SUCCEEDED", 2)
    # the stream read on a resumes on b, then a restarted a resumes after b
    async with stream(b.url, tenant, last=made[1]) as (seen, read):
        await read(3)
    assert seen.ids == made[2:] + later
    a.proc.terminate()
    a.proc.wait(30)
    more = await transition(sessions, job, "FAILED", 2)
    a.start()
    async with stream(a.url, tenant, last=later[-1]) as (seen, read):
        await read(2)
        await nothing_more(read, within=2 * POLL_S)
    assert seen.ids == more


async def test_live_events_arrive_in_order_on_every_subscriber(
    gateways: tuple[Gateway, Gateway], sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Subscribers from now (no resume position) get what commits after they connected."""
    a, b = gateways
    tenant = await make_tenant(a.url)
    job = await add_job(sessions, tenant)
    async with (
        stream(a.url, tenant) as (on_a, read_a),
        stream(b.url, tenant) as (on_b, read_b),
    ):
        made: list[int] = []  # the streams start where the hub was when they answered
        for _ in range(10):
            made += await transition(sessions, job, "RUNNING")
        await read_a(10)
        await read_b(10)
    assert on_a.ids == on_b.ids == made


async def test_a_position_past_the_horizon_skips_what_it_has_seen(
    gateways: tuple[Gateway, Gateway], sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A Last-Event-ID that this gateway has not reached yet (another one's, ahead of it)
    waits live and hands out only the ids after it."""
    a, _ = gateways
    tenant = await make_tenant(a.url)
    job = await add_job(sessions, tenant)
    start = await last_id(sessions)
    async with stream(a.url, tenant, last=start + 3) as (seen, read):
        made = await transition(sessions, job, "RUNNING", 6)
        expected = [i for i in made if i > start + 3]
        assert expected
        await read(len(expected))
        await nothing_more(read, within=2 * POLL_S)
    assert seen.ids == expected


async def test_streams_are_isolated_between_tenants(
    gateways: tuple[Gateway, Gateway], sessions: async_sessionmaker[AsyncSession]
) -> None:
    a, _ = gateways
    one, two = await make_tenant(a.url), await make_tenant(a.url)
    job_one, job_two = await add_job(sessions, one), await add_job(sessions, two)
    start = await last_id(sessions)
    mine = await transition(sessions, job_one, "RUNNING")
    theirs = await transition(sessions, job_two, "RUNNING")
    mine += await transition(sessions, job_one, "SUCCEEDED")
    async with stream(a.url, one, params={"after": str(start)}) as (seen, read):
        await read(2)
        await nothing_more(read, within=2 * POLL_S)
    assert seen.ids == mine
    assert theirs[0] not in seen.ids
    async with httpx.AsyncClient(base_url=a.url) as c:
        r = await c.get("/v1/events", params={"job": str(job_two)}, headers=one.headers)
    assert r.status_code == 404


async def test_job_narrows_to_a_job_an_array_or_an_element(
    gateways: tuple[Gateway, Gateway], sessions: async_sessionmaker[AsyncSession]
) -> None:
    a, _ = gateways
    tenant = await make_tenant(a.url)
    plain = await add_job(sessions, tenant)
    async with sessions() as s, s.begin():
        parent, array = new_array(tenant.id, 3)
        s.add(parent)
        await s.flush()
        s.add(array)
    start = await last_id(sessions)
    async with sessions() as s, s.begin():  # element 1 queued: the array starts running
        s.add(new_job(tenant.id, id=element_id(parent.id, 1), array_id=parent.id,
                      array_index=1, state="QUEUED"))  # fmt: skip
    element = element_id(parent.id, 1)
    ran = await transition(sessions, element, "RUNNING")
    other = await transition(sessions, plain, "RUNNING")
    after = {"after": str(start)}
    async with stream(a.url, tenant, params={**after, "job": str(plain)}) as (seen, read):
        await read(1)
        await nothing_more(read, within=2 * POLL_S)
    assert seen.ids == other
    async with stream(a.url, tenant, params={**after, "job": str(parent.id)}) as (seen, read):
        await read(2)
        await nothing_more(read, within=2 * POLL_S)
    array_event, element_event = seen.events
    assert array_event["data"] == {**array_event["data"], "job_id": str(parent.id),
                                   "state": "RUNNING", "attempt": 0}  # fmt: skip
    assert int(element_event["id"]) == ran[0]
    assert element_event["data"]["job_id"] == public_id(parent.id, 1)
    assert element_event["data"]["array_id"] == str(parent.id)
    assert element_event["data"]["array_index"] == 1
    one = {**after, "job": public_id(parent.id, 1)}
    async with stream(a.url, tenant, params=one) as (seen, read):
        await read(1)
        await nothing_more(read, within=2 * POLL_S)
    assert seen.ids == ran
    async with httpx.AsyncClient(base_url=a.url) as c:
        for bad in (public_id(parent.id, 3), "nope", str(uuid.uuid4())):
            r = await c.get("/v1/events", params={"job": bad}, headers=tenant.headers)
            assert r.status_code == 404, bad


async def test_migrations_have_state_events_in_the_same_sequence(
    gateways: tuple[Gateway, Gateway], sessions: async_sessionmaker[AsyncSession]
) -> None:
    a, _ = gateways
    tenant = await make_tenant(a.url)
    job = await add_job(sessions, tenant)
    start = await last_id(sessions)
    migration_id = uuid.uuid4()
    async with sessions() as s, s.begin():
        s.add(Migration(id=migration_id, tenant_id=tenant.id, dataset="d.npy",
                        from_tier="local", to_tier="archive", mode="copy"))  # fmt: skip
    made = await transition(sessions, job, "RUNNING")
    async with sessions() as s, s.begin():
        await s.execute(
            text("UPDATE migrations SET state = 'RUNNING' WHERE id = :id"), {"id": migration_id}
        )
    async with stream(a.url, tenant, params={"after": str(start)}) as (seen, read):
        await read(3)
    kinds = [(e["event"], e["data"].get("state")) for e in seen.events]
    assert kinds == [
        ("migration.state", "PENDING"),
        ("job.state", "RUNNING"),
        ("migration.state", "RUNNING"),
    ]
    assert seen.ids == sorted(seen.ids)
    assert made[0] in seen.ids
    assert seen.events[0]["data"]["migration_id"] == str(migration_id)


async def test_progress_rows_are_job_progress_events(
    gateways: tuple[Gateway, Gateway], sessions: async_sessionmaker[AsyncSession]
) -> None:
    """The worker's progress rows (kind ``progress``) are ``job.progress`` events; the job's
    transitions (``/jobs/{id}/events``) leave them out."""
    a, _ = gateways
    tenant = await make_tenant(a.url)
    job = await add_job(sessions, tenant)
    start = await last_id(sessions)
    async with sessions() as s, s.begin():
        s.add(JobEvent(job_id=job, tenant_id=tenant.id, attempt=1, from_state="RUNNING",
                       to_state="RUNNING", kind="progress", progress=0.25))  # fmt: skip
    async with stream(a.url, tenant, params={"after": str(start)}) as (seen, read):
        await read(1)
    (event,) = seen.events
    assert event["event"] == "job.progress"
    assert event["data"]["progress"] == 0.25
    assert event["data"]["job_id"] == str(job)
    assert "state" not in event["data"]
    async with httpx.AsyncClient(base_url=a.url) as c:
        r = await c.get(f"/v1/jobs/{job}/events", headers=tenant.headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"items": []}


async def test_checkpoints_are_job_checkpoint_events(
    gateways: tuple[Gateway, Gateway],
    sessions: async_sessionmaker[AsyncSession],
    settings: CommonSettings,
) -> None:
    """A worker's checkpoint writes (a resume, then saves) are ``job.checkpoint`` events with
    the step and the job's count, in the feed's one sequence (a resumed stream neither loses
    nor repeats one); a late frame of an attempt that is no longer the job's writes nothing;
    the job's transitions leave them out."""
    from services.worker.progress import write_checkpoint

    a, b = gateways
    tenant = await make_tenant(a.url)
    async with sessions() as s, s.begin():
        row = new_job(tenant.id, kernel="stencil2d", state="RUNNING", attempts=2, checkpoints=3)
        s.add(row)
    job = row.id
    start = await last_id(sessions)
    conn = await asyncpg.connect(settings.postgres.url(driver="postgresql"))
    try:
        write = functools.partial(write_checkpoint, conn.execute, job, worker="w-ck")
        await write(2, event="resumed", step=5120)
        await write(2, event="saved", step=7168)
        await write(1, event="saved", step=9000)  # attempt 1's, late: not the job's any more
        async with stream(a.url, tenant, params={"after": str(start)}) as (seen, read):
            await read(2)
            await nothing_more(read, within=2 * POLL_S)
        await write(2, event="saved", step=9216)
    finally:
        await conn.close()
    resumed, saved = seen.events
    assert [resumed["event"], saved["event"]] == ["job.checkpoint"] * 2
    assert {k: v for k, v in resumed["data"].items() if k != "at"} == {
        "job_id": str(job),
        "state": "RUNNING",
        "checkpoint": "resumed",
        "step": 5120,
        "checkpoints": 3,
        "attempt": 2,
    }
    assert (saved["data"]["checkpoint"], saved["data"]["step"]) == ("saved", 7168)
    assert saved["data"]["checkpoints"] == 4
    # on the other gateway, after the last one seen: only the one written since
    async with stream(b.url, tenant, last=int(saved["id"])) as (later, read):
        await read(1)
        await nothing_more(read, within=2 * POLL_S)
    assert [(e["data"]["step"], e["data"]["checkpoints"]) for e in later.events] == [(9216, 5)]
    async with sessions() as s:
        done = await s.get(Job, job)
        assert done is not None
        assert (done.checkpoints, done.resumed_from) == (5, 5120)
    async with httpx.AsyncClient(base_url=a.url) as c:
        r = await c.get(f"/v1/jobs/{job}/events", headers=tenant.headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"items": []}


async def test_idle_streams_get_a_keep_alive_comment(
    gateways: tuple[Gateway, Gateway],
) -> None:
    a, _ = gateways
    tenant = await make_tenant(a.url)
    async with stream(a.url, tenant) as (seen, read):
        await nothing_more(read, within=4 * KEEP_ALIVE_S)
    assert seen.comments >= 2  # the first line, and at least one keep-alive after it


async def test_a_revoked_key_ends_its_stream(gateways: tuple[Gateway, Gateway]) -> None:
    a, _ = gateways
    tenant = await make_tenant(a.url)
    async with stream(a.url, tenant) as (seen, _read):
        await asyncio.sleep(2 * KEEP_ALIVE_S)
        assert not seen.ended.is_set()
        async with httpx.AsyncClient(base_url=a.url) as c:
            r = await c.delete(f"/v1/tenants/{tenant.id}/keys/{tenant.key_id}", headers=ADMIN)
            assert r.status_code == 204, r.text
        async with asyncio.timeout(ARRIVAL_S):
            await seen.ended.wait()


async def test_a_lower_id_that_commits_later_is_not_skipped(
    gateways: tuple[Gateway, Gateway],
    sessions: async_sessionmaker[AsyncSession],
    settings: CommonSettings,
) -> None:
    """Transaction ``older`` takes its xid first; ``newer`` draws a lower id and stays open;
    ``older`` draws a higher id and commits. The higher id must wait for the lower one
    (comparing each row's xid with the oldest running one would hand it out: ``older``'s
    xid is older than ``newer``'s)."""
    a, _ = gateways
    tenant = await make_tenant(a.url)
    job = await add_job(sessions, tenant)
    start = await last_id(sessions)
    dsn = settings.postgres.url(driver="postgresql")
    older, newer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    insert = (
        "INSERT INTO job_events (job_id, tenant_id, attempt, from_state, to_state)"
        " VALUES ($1, $2, 0, 'QUEUED', $3) RETURNING id"
    )
    try:
        async with stream(a.url, tenant, params={"after": str(start)}) as (seen, read):
            t_old, t_new = older.transaction(), newer.transaction()
            await t_old.start()
            await older.fetchval("SELECT pg_current_xact_id()")
            await t_new.start()
            low = await newer.fetchval(insert, job, tenant.id, "RUNNING")
            high = await older.fetchval(insert, job, tenant.id, "SUCCEEDED")
            await t_old.commit()
            assert low < high
            await nothing_more(read, within=3 * POLL_S)
            await t_new.commit()
            await read(2)
        assert seen.ids == [low, high]
    finally:
        await older.close()
        await newer.close()


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"after": "-1"}, {}),
        ({"after": "1.5"}, {}),
        ({"after": "99999999999999999999"}, {}),
        ({}, {"Last-Event-ID": "abc"}),
        ({"after": "3"}, {"Last-Event-ID": "x1"}),
    ],
)
async def test_a_bad_resume_position_is_422(
    gateways: tuple[Gateway, Gateway], params: dict[str, str], headers: dict[str, str]
) -> None:
    a, _ = gateways
    tenant = await make_tenant(a.url)
    async with httpx.AsyncClient(base_url=a.url) as c:
        r = await c.get("/v1/events", params=params, headers={**tenant.headers, **headers})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
