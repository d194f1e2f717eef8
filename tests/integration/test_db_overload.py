"""A database that refuses for want of resources (too many connections) is a 503 to retry
shortly, never a 500, and not an outage: the breaker does not count it. The refusal is real:
a role of the server's own whose connection limit is 0."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.engine import is_connectivity_error, is_overload_error, make_engine
from shared.problems import install_problem_handlers
from shared.settings import CommonSettings


@pytest.fixture
async def full_role(engine: AsyncEngine) -> AsyncIterator[str]:
    """A login role that may open no connection at all: every connect is refused (53300)."""
    role = f"stratus_full_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0"))
    try:
        yield role
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP ROLE IF EXISTS {role}"))


async def _refusal(settings: CommonSettings, role: str) -> DBAPIError:
    engine = make_engine(settings.postgres.model_copy(update={"user": role}))
    try:
        with pytest.raises(DBAPIError) as caught:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        return caught.value
    finally:
        await engine.dispose()


async def test_too_many_connections_is_overload_not_an_outage(
    settings: CommonSettings, full_role: str
) -> None:
    pg = settings.postgres
    with pytest.raises(asyncpg.TooManyConnectionsError) as raw:
        await asyncpg.connect(host=pg.host, port=pg.port, user=full_role, database=pg.database)
    assert is_overload_error(raw.value)
    assert not is_connectivity_error(raw.value)
    wrapped = await _refusal(settings, full_role)
    assert is_overload_error(wrapped)
    assert not is_connectivity_error(wrapped)
    assert not is_overload_error(RuntimeError("something else"))


async def test_a_refused_connection_is_a_503_problem(
    settings: CommonSettings, full_role: str
) -> None:
    refusal = await _refusal(settings, full_role)
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/refused")
    async def refused() -> None:
        raise refusal

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/refused")
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "1"
    assert r.json()["type"].endswith("/overloaded")
