"""Nothing one tenant sends changes the answers another tenant gets: storage errors never
count as a database outage, names that clash with another dataset's folder are a 409, a
deleted dataset leaves no folder behind, and racing uploads of ``p/a`` and ``p/a/b`` end
with one of them stored and the other refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.gateway.app import create_app
from services.gateway.deps import session_scope
from services.gateway.settings import GatewaySettings
from shared.db.engine import is_connectivity_error, make_engine
from shared.errors import Conflict
from shared.resilience import BreakerState, CircuitBreaker
from shared.runtime import Resources
from shared.settings import PostgresSettings, StorageSettings
from tests.datamover.harness import CHUNK, Tenant, new_tenant, payload, put

DATA = payload(4096)


def tenant_root(storage: StorageSettings, tenant: Tenant) -> Path:
    return Path(storage.local.root) / tenant.id


def assert_problem(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


def breaker_state(gateway: FastAPI) -> BreakerState:
    state: BreakerState = gateway.state.resources.db_breaker.state
    return state


@pytest.mark.parametrize(
    "exc",
    [
        IsADirectoryError(21, "Is a directory"),
        NotADirectoryError(20, "Not a directory"),
        FileExistsError(17, "File exists"),
        PermissionError(13, "Permission denied"),
        OSError(28, "No space left on device"),
        OSError("short read at 0"),
    ],
)
def test_a_file_error_is_not_a_database_connectivity_error(exc: OSError) -> None:
    assert not is_connectivity_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "refused"),
        ConnectionResetError(104, "reset"),
        TimeoutError(),
        asyncpg.ConnectionDoesNotExistError("closed in the middle of operation"),
        OperationalError("SELECT 1", {}, ConnectionRefusedError()),
    ],
)
def test_the_database_s_own_failures_are_connectivity_errors(exc: BaseException) -> None:
    assert is_connectivity_error(exc)


async def test_a_database_that_cannot_be_reached_fails_with_a_database_error() -> None:
    """What a connect raises says "database" by its type (a bare OSError could be a file's)."""
    engine = make_engine(PostgresSettings(port=1, connect_timeout_s=0.5))
    try:
        with pytest.raises(OperationalError) as caught:
            async with engine.connect():
                pass
        assert is_connectivity_error(caught.value)
    finally:
        await engine.dispose()


async def test_an_error_that_is_not_the_database_s_gives_no_verdict_on_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A request's block that fails with a tenant's 409 or a file's error neither counts
    against the database nor closes its open circuit: only the database's own answers do."""
    now = [0.0]
    breaker = CircuitBreaker(
        "postgres",
        failure_threshold=1,
        reset_timeout_s=10.0,
        is_failure=is_connectivity_error,
        clock=lambda: now[0],
    )
    res = cast(
        Resources,
        SimpleNamespace(db_breaker=breaker, sessions=sessions, relay=SimpleNamespace(wake=None)),
    )
    breaker.on_failure(ConnectionRefusedError())
    now[0] = 11.0  # past the reset timeout: the next block is the trial

    async def block(sql: str, error: Exception | None = None) -> None:
        async with session_scope(res) as session:
            await session.execute(text(sql))
            if error is not None:
                raise error

    for error in (Conflict("a clash"), IsADirectoryError(21, "Is a directory")):
        with pytest.raises(type(error)):
            await block("SELECT 1", error)
        assert breaker.state is BreakerState.HALF_OPEN
    await block("SELECT 1")
    assert breaker.state is BreakerState.CLOSED
    with pytest.raises(DBAPIError):  # the database answered: it is up
        await block("SELECT 1/0")
    assert breaker.state is BreakerState.CLOSED


@pytest.fixture(scope="module")
async def broken(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A gateway with a tier that fails every write: its root is a file, not a folder."""
    root = tmp_path_factory.mktemp("broken-tiers")
    (root / "not-a-folder").write_bytes(b"")
    storage = StorageSettings.model_validate(
        {
            "local": {"root": str(root / "local")},
            "archive": {"root": str(root / "archive")},
            "extra": {"broken": {"kind": "file", "root": str(root / "not-a-folder")}},
            "chunk_bytes": CHUNK,
            "fsync": False,
        }
    )
    app = create_app(GatewaySettings(storage=storage))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://broken") as client:
            yield app, client


async def test_a_failing_tier_is_a_503_of_its_own_and_not_a_database_outage(
    api: httpx.AsyncClient, broken: tuple[FastAPI, httpx.AsyncClient]
) -> None:
    """Every write to the tier raises ``NotADirectoryError`` (an ``OSError``): each upload
    is a 503 problem about the tier, the database breaker stays closed, and every other
    request of every tenant is answered as before."""
    app, client = broken
    t, other = await new_tenant(api), await new_tenant(api)
    for _ in range(6):  # twice the database breaker's threshold
        r = await client.put(
            "/v1/datasets/a", params={"tier": "broken"}, content=DATA, headers=t.headers
        )
        assert_problem(r, 503)
        assert "broken" in r.json()["detail"]
        assert breaker_state(app) is BreakerState.CLOSED
    assert (await client.put("/v1/datasets/b", content=DATA, headers=t.headers)).status_code == 201
    assert (
        await client.put("/v1/datasets/z", content=DATA, headers=other.headers)
    ).status_code == 201
    assert (await client.get("/v1/datasets", headers=other.headers)).status_code == 200
    assert (await client.get("/readyz")).status_code == 200


async def test_a_folder_left_where_a_dataset_goes_is_cleared(
    api: httpx.AsyncClient, storage: StorageSettings
) -> None:
    """What a deleted dataset's pending clean-up (or a crash) leaves where a new dataset
    goes, a folder or a file above it, is removed: the name is the tenant's to use."""
    t = await new_tenant(api)
    root = tenant_root(storage, t)
    (root / "y" / "a").mkdir(parents=True)
    (root / "y" / "a" / "leftover").write_bytes(b"x")
    (root / "w").write_bytes(b"x")
    assert (await api.put("/v1/datasets/y/a", content=DATA, headers=t.headers)).status_code == 201
    assert (await api.put("/v1/datasets/w/v", content=DATA, headers=t.headers)).status_code == 201
    assert (root / "y" / "a").read_bytes() == DATA
    assert (root / "w" / "v").read_bytes() == DATA


async def test_a_name_freed_by_deleting_the_dataset_below_it_can_be_used(
    api: httpx.AsyncClient, gateway: FastAPI, storage: StorageSettings
) -> None:
    """``x/a/b`` deleted leaves no ``x/a`` folder: ``x/a`` is then an ordinary upload."""
    t = await new_tenant(api)
    await put(api, t, "x/a/b", DATA)
    assert (await api.delete("/v1/datasets/x/a/b", headers=t.headers)).status_code == 204
    for _ in range(4):
        r = await api.put("/v1/datasets/x/a", content=DATA, headers=t.headers)
        assert r.status_code in (200, 201), r.text
    assert (await api.get("/v1/datasets/x/a", headers=t.headers)).content == DATA
    assert breaker_state(gateway) is BreakerState.CLOSED


async def test_deleting_a_dataset_leaves_no_empty_folders(
    api: httpx.AsyncClient, storage: StorageSettings
) -> None:
    t = await new_tenant(api)
    await put(api, t, "d/e/f/g.bin", DATA)
    await put(api, t, "d/keep.bin", DATA)
    assert (await api.delete("/v1/datasets/d/e/f/g.bin", headers=t.headers)).status_code == 204
    root = tenant_root(storage, t)
    assert not (root / "d" / "e").exists()
    assert (root / "d" / "keep.bin").is_file()  # a folder that still holds data stays
    assert (await api.delete("/v1/datasets/d/keep.bin", headers=t.headers)).status_code == 204
    assert sorted(p.name for p in root.iterdir()) == []


CLASHES = [("p/a", "p/a/b"), ("q/a/b", "q/a"), ("r/a/b/c", "r")]


@pytest.mark.parametrize(("first", "second"), CLASHES)
async def test_a_name_that_clashes_with_another_dataset_s_folder_is_a_409(
    api: httpx.AsyncClient, first: str, second: str
) -> None:
    t = await new_tenant(api)
    await put(api, t, first, DATA)
    r = await api.put(f"/v1/datasets/{second}", content=DATA, headers=t.headers)
    assert_problem(r, 409)
    assert "clashes" in r.json()["detail"]
    assert (await api.get(f"/v1/datasets/{first}", headers=t.headers)).content == DATA
    listed = await api.get("/v1/datasets", headers=t.headers)
    assert [d["name"] for d in listed.json()["items"]] == [first]


async def test_racing_uploads_of_a_name_and_its_folder_store_exactly_one(
    api: httpx.AsyncClient, gateway: FastAPI
) -> None:
    t = await new_tenant(api)
    for i in range(8):
        a, b = await asyncio.gather(
            api.put(f"/v1/datasets/race{i}/a", content=DATA, headers=t.headers),
            api.put(f"/v1/datasets/race{i}/a/b", content=DATA, headers=t.headers),
        )
        assert sorted([a.status_code, b.status_code]) == [201, 409], (a.text, b.text)
    listed = await api.get("/v1/datasets", params={"limit": 100}, headers=t.headers)
    assert len(listed.json()["items"]) == 8
    assert breaker_state(gateway) is BreakerState.CLOSED


async def _abuse(api: httpx.AsyncClient, t: Tenant, storage: StorageSettings, i: int) -> list[int]:
    """One round of what a hostile tenant can send: clashes both ways, racing clashes,
    deletes that would leave folders, a leftover folder where a file goes, a NUL in a
    filter."""
    h = t.headers
    sent = [
        await api.put(f"/v1/datasets/x{i}/a/b", content=DATA, headers=h),
        await api.delete(f"/v1/datasets/x{i}/a/b", headers=h),
        await api.put(f"/v1/datasets/x{i}/a", content=DATA, headers=h),
        await api.put(f"/v1/datasets/x{i}/a/b", content=DATA, headers=h),  # 409
        *await asyncio.gather(
            api.put(f"/v1/datasets/p{i}/a", content=DATA, headers=h),
            api.put(f"/v1/datasets/p{i}/a/b", content=DATA, headers=h),
            api.delete(f"/v1/datasets/x{i}/a", headers=h),
        ),
    ]
    leftover = tenant_root(storage, t) / f"o{i}" / "a" / "f"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"x")
    for _ in range(3):
        sent.append(await api.put(f"/v1/datasets/o{i}/a", content=DATA, headers=h))
    sent.append(await api.get("/v1/datasets", params={"prefix": "\x00"}, headers=h))  # 422
    return [r.status_code for r in sent]


@contextlib.asynccontextmanager
async def hostile(
    api: httpx.AsyncClient, t: Tenant, storage: StorageSettings
) -> AsyncIterator[asyncio.Task[list[int]]]:
    async def rounds() -> list[int]:
        codes: list[int] = []
        for i in range(6):
            codes += await _abuse(api, t, storage, i)
        return codes

    task = asyncio.create_task(rounds())
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_nothing_one_tenant_sends_changes_what_another_tenant_gets(
    api: httpx.AsyncClient, gateway: FastAPI, storage: StorageSettings
) -> None:
    attacker, victim = await new_tenant(api), await new_tenant(api)
    await put(api, victim, "mine/kept.bin", DATA)
    answers: list[tuple[str, int]] = []
    async with hostile(api, attacker, storage) as attack:
        n = 0
        while not attack.done():
            n += 1
            h = victim.headers
            for what, r in [
                ("put", await api.put(f"/v1/datasets/mine/{n}", content=DATA, headers=h)),
                ("get", await api.get("/v1/datasets/mine/kept.bin", headers=h)),
                ("list", await api.get("/v1/datasets", headers=h)),
                ("healthz", await api.get("/healthz")),
                ("readyz", await api.get("/readyz")),
            ]:
                answers.append((what, r.status_code))
            await asyncio.sleep(0)
        attacker_codes = await attack
    assert n > 1
    assert all(c < 500 for c in attacker_codes), attacker_codes
    assert 409 in attacker_codes
    assert 422 in attacker_codes
    assert all(200 <= code < 300 for _, code in answers), [a for a in answers if a[1] >= 300]
    assert breaker_state(gateway) is BreakerState.CLOSED
