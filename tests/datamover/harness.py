"""Test harness for storage: a real S3 server (``moto_server``, a subprocess on a free
loopback port, real HTTP), tier directories, the gateway in-process with those tiers, and
helpers shared by ``tests/datasets`` and ``tests/datamover``."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from fastapi import FastAPI

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.settings import StorageSettings
from tests.conftest import ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHUNK = 5 * 2**20  # the smallest chunk (S3's smallest part), so that tests stay small
BUCKET = "stratus-test"
MOTO = Path(sys.executable).with_name("moto_server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MotoServer:
    """``moto_server`` on loopback; ``stop`` and ``start`` again on the same port."""

    def __init__(self, port: int | None = None, *, tls: tuple[Path, Path] | None = None) -> None:
        """``tls``: a certificate and its key, to serve HTTPS (clients trust ``tls[0]``)."""
        self.port = port or free_port()
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        tls = ["-c", str(self.tls[0]), "-k", str(self.tls[1])] if self.tls else []
        self.proc = subprocess.Popen(
            [str(MOTO), "-H", "127.0.0.1", "-p", str(self.port), *tls],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else True
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/moto-api/", timeout=0.5, verify=verify)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    @classmethod
    @contextmanager
    def running(cls) -> Iterator[MotoServer]:
        """A started server, stopped on exit (for fixtures)."""
        server = cls()
        server.start()
        try:
            yield server
        finally:
            server.stop()

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
            verify=str(self.tls[0]) if self.tls else None,
        )


def storage_settings(root: Path, moto: MotoServer, **extra: Any) -> StorageSettings:
    return StorageSettings.model_validate(
        {
            "local": {"root": str(root / "local")},
            "archive": {"root": str(root / "archive")},
            "s3": {
                "kind": "s3",
                "endpoint_url": moto.url,
                "bucket": BUCKET,
                "region": "us-east-1",
                "access_key_id": "testing",
                "secret_access_key": "testing",
                "connect_timeout_s": 1.0,
                "read_timeout_s": 10.0,
            },
            "chunk_bytes": CHUNK,
            "fsync": False,
            **extra,
        }
    )


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with MotoServer.running() as server:
        yield server


@pytest.fixture(scope="session")
def tiers_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiers")


@pytest.fixture(scope="session")
def storage(tiers_root: Path, moto: MotoServer) -> StorageSettings:
    return storage_settings(tiers_root, moto)


# A gateway per package (datamover, datasets): its connection pool and consumers are gone
# when the package ends, so the directories that follow have the database's connections.
@pytest.fixture(scope="package")
async def gateway(test_env: dict[str, str], storage: StorageSettings) -> AsyncIterator[FastAPI]:
    """The gateway in-process, with the test tiers."""
    app = create_app(GatewaySettings(storage=storage))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture(scope="package")
async def api(gateway: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=60) as c:
        yield c


@dataclass
class Tenant:
    id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def new_tenant(
    api: httpx.AsyncClient, *, quotas: dict[str, Any] | None = None, scopes: list[str] | None = None
) -> Tenant:
    body: dict[str, Any] = {"name": f"t-{uuid.uuid4().hex[:12]}"}
    if quotas:
        body["quotas"] = quotas
    r = await api.post("/v1/tenants", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    key_body: dict[str, Any] = {"name": "k"}
    if scopes is not None:
        key_body["scopes"] = scopes
    k = await api.post(f"/v1/tenants/{r.json()['id']}/keys", json=key_body, headers=ADMIN)
    assert k.status_code == 201, k.text
    return Tenant(r.json()["id"], k.json()["key"])


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    block = bytes((i * 131 + seed * 17 + (i >> 9)) & 0xFF for i in range(65_536))
    return (block * (size // 65_536 + 1))[:size]


async def put(
    api: httpx.AsyncClient, tenant: Tenant, name: str, data: bytes, **params: Any
) -> dict[str, Any]:
    r = await api.put(f"/v1/datasets/{name}", content=data, headers=tenant.headers, params=params)
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


async def wait_migration(
    api: httpx.AsyncClient,
    tenant: Tenant,
    migration_id: str,
    states: tuple[str, ...] = ("SUCCEEDED", "FAILED"),
    timeout: float = 60,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await api.get(f"/v1/migrations/{migration_id}", headers=tenant.headers)
        assert r.status_code == 200, r.text
        body = r.json()
        if body["state"] in states:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"migration not in {states} after {timeout}s: {body}")


@asynccontextmanager
async def running_datamover(storage: StorageSettings, **overrides: Any) -> AsyncIterator[FastAPI]:
    """A datamover in-process (its own claim loop, consumer and tiers), stopped on exit."""
    from services.datamover.app import create_app as create_datamover
    from services.datamover.settings import DatamoverSettings

    options: dict[str, Any] = {
        "name": f"test-dm-{uuid.uuid4().hex[:8]}",
        "claim_interval_s": 0.2,
        "progress_interval_s": 0.2,
        "lease_s": 5.0,
        "retry_initial_s": 0.1,
        "retry_max_interval_s": 0.5,
        "retry_max_attempts": 4,
        "breaker_reset_s": 1.0,
        **overrides,
    }
    app = create_datamover(DatamoverSettings(storage=storage, **options))
    async with app.router.lifespan_context(app):
        yield app


def datamover_env(
    test_env: dict[str, str], storage: StorageSettings, **extra: str
) -> dict[str, str]:
    """The environment of a datamover subprocess with the test tiers."""
    s3 = storage.s3
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("STRATUS_")},
        **test_env,
        "STRATUS_LOG_JSON": "true",
        "STRATUS_LOG_LEVEL": "INFO",
        "STRATUS_STORAGE__LOCAL__ROOT": storage.local.root,
        "STRATUS_STORAGE__ARCHIVE__ROOT": storage.archive.root,
        "STRATUS_STORAGE__S3__ENDPOINT_URL": s3.endpoint_url or "",
        "STRATUS_STORAGE__S3__BUCKET": s3.bucket,
        "STRATUS_STORAGE__S3__REGION": s3.region or "",
        "STRATUS_STORAGE__S3__ACCESS_KEY_ID": "testing",
        "STRATUS_STORAGE__S3__SECRET_ACCESS_KEY": "testing",
        "STRATUS_STORAGE__CHUNK_BYTES": str(storage.chunk_bytes),
        "STRATUS_STORAGE__FSYNC": "false",
        "STRATUS_PORT": str(free_port()),
        "STRATUS_CLAIM_INTERVAL_S": "0.2",
        "STRATUS_PROGRESS_INTERVAL_S": "0.2",
        **extra,
    }
