"""Test harness: every test session gets its own PostgreSQL database and RabbitMQ vhost on
the real servers (never the ones ``make up`` uses), dropped at the end."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db.engine import make_engine, make_sessionmaker
from shared.settings import CommonSettings
from tools.cluster import drop_database, drop_vhost, prepare_database, prepare_vhost

RUN_ID = uuid.uuid4().hex[:8]
ADMIN_KEY = "test-admin-" + secrets.token_urlsafe(16)


@pytest.fixture(scope="session")
def test_env() -> Iterator[dict[str, str]]:
    db = vhost = f"stratus_test_{RUN_ID}"
    prepare_database(db)
    prepare_vhost(vhost)
    env = {
        "STRATUS_POSTGRES__DATABASE": db,
        "STRATUS_RABBIT__VHOST": vhost,
        "STRATUS_ADMIN_KEY": ADMIN_KEY,
        "STRATUS_KEY_SECRET": "test-key-secret-" + RUN_ID,
        "STRATUS_ENVIRONMENT": "test",
        "STRATUS_LOG_LEVEL": "WARNING",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        drop_database(db)
        drop_vhost(vhost)


@pytest.fixture(scope="session")
def settings(test_env: dict[str, str]) -> CommonSettings:
    return CommonSettings()


@pytest.fixture(scope="session")
async def engine(settings: CommonSettings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(settings.postgres, application_name="stratus-tests")
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)
