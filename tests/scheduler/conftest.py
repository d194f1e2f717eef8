"""Each scheduler test module works in a database of its own, emptied before each test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.settings import CommonSettings
from tests.factories import own_database

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture(scope="module")
async def db(settings: CommonSettings, request: pytest.FixtureRequest) -> AsyncIterator[Sessions]:
    """A migrated database ``<test database>_sched_<module>``, dropped after the module."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    async with own_database(settings, f"sched_{module}") as (_, sessions):
        yield sessions


@pytest.fixture
async def s(db: Sessions) -> Sessions:
    """``db`` without tenants (and so jobs, datasets, migrations), workers, outbox rows and
    pool records."""
    async with db() as session, session.begin():
        await session.execute(text("TRUNCATE tenants, workers, outbox, worker_pools CASCADE"))
    return db
