"""The gateway app in-process (real PostgreSQL, RabbitMQ and Redis behind it)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.settings import StorageSettings
from tests.conftest import ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@asynccontextmanager
async def gateway_client(tiers: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway app in-process, its lifespan run, datasets under ``tiers`` (not run/data)."""
    storage = StorageSettings.model_validate(
        {
            "local": {"root": str(tiers / "local")},
            "archive": {"root": str(tiers / "archive")},
            "fsync": False,
        }
    )
    app = create_app(GatewaySettings(storage=storage))
    async with app.router.lifespan_context(app):
        await open_pool(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
            yield c


async def open_pool(app: FastAPI) -> None:
    """Wait for the gateway's resources, then open its whole connection pool, one connection
    after another. A burst of concurrent requests on a cold pool opens its connections all at
    once, and on a busy machine a connection that takes longer than ``connect_timeout_s`` is a
    503: an answer about the machine, not about what a test submits."""
    for _ in range(300):
        if getattr(app.state, "resources", None) is not None:
            break
        await asyncio.sleep(0.1)
    engine = app.state.resources.engine
    async with AsyncExitStack() as held:
        for _ in range(app.state.settings.postgres.pool_size):
            conn = await held.enter_async_context(engine.connect())
            await conn.exec_driver_sql("SELECT 1")


# One gateway for the gateway tests: its outbox relay and consumers stop when the last of
# them ends, so none keeps working on the shared database and vhost under the directories
# that follow. A module that needs other settings starts a gateway of its own beside it
# (``gateway_client``).
@pytest.fixture(scope="package")
async def client(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client(tmp_path_factory.mktemp("gateway-tiers")) as c:
        yield c


@dataclass
class TenantKey:
    tenant_id: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def make_tenant(client: httpx.AsyncClient, scopes: list[str] | None = None) -> TenantKey:
    r = await client.post("/v1/tenants", json={"name": f"t-{uuid.uuid4().hex[:10]}"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    tid = r.json()["id"]
    body: dict[str, object] = {"name": "k"}
    if scopes is not None:
        body["scopes"] = scopes
    k = await client.post(f"/v1/tenants/{tid}/keys", json=body, headers=ADMIN)
    assert k.status_code == 201, k.text
    return TenantKey(tid, k.json()["key"], k.json()["id"])


@pytest.fixture
async def tenant(client: httpx.AsyncClient) -> TenantKey:
    return await make_tenant(client)
