"""The Python SDK (``clients/python``) against a live cluster: one cluster for the whole
folder (its start costs seconds), every test on a tenant of its own, made through the SDK's
admin methods."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from stratus_client import AsyncClient, Client, RetryEvent, RetryPolicy

from tests.conftest import ADMIN_KEY
from tests.e2e.conftest import own_cluster
from tools.cluster import LocalCluster

MC: dict[str, Any] = {"samples": 1000, "seed": 1}  # montecarlo_pi: done in milliseconds


@pytest.fixture(scope="package")
def sdk_cluster(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """Every service, with the ``local`` and ``archive`` tiers (no ``s3``)."""
    root = Path(tmp_path_factory.mktemp("sdk-tiers"))
    env = {
        "STRATUS_STORAGE__LOCAL__ROOT": str(root / "local"),
        "STRATUS_STORAGE__ARCHIVE__ROOT": str(root / "archive"),
        "STRATUS_STORAGE__FSYNC": "false",
    }
    with own_cluster(
        "sdk",
        test_env,
        tmp_path_factory,
        env=env,
        workers=1,
        worker_env={"STRATUS_CONCURRENCY": "2", "STRATUS_HEARTBEAT_INTERVAL_S": "0.5"},
    ) as cluster:
        yield cluster


@pytest.fixture(scope="package")
def url(sdk_cluster: LocalCluster) -> str:
    return sdk_cluster.url("gateway")


@pytest.fixture(scope="package")
def admin(url: str) -> Iterator[Client]:
    with Client(url, ADMIN_KEY) as c:
        yield c


def new_key(admin: Client, name: str, **quotas: Any) -> str:
    """A new tenant with ``quotas`` (made through the SDK): a key of it with every scope."""
    tenant = admin.admin.create_tenant(f"{name}-{time.time_ns()}", quotas=quotas)
    return admin.admin.create_key(tenant.id, "sdk-test").key


@pytest.fixture
def key(admin: Client, request: pytest.FixtureRequest) -> str:
    return new_key(admin, request.node.name.replace("[", "-").strip("]")[:80])


@dataclass
class Retries:
    """A retry policy that records each retry."""

    events: list[RetryEvent]

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(on_retry=self.events.append)


@pytest.fixture
def retries() -> Retries:
    return Retries([])


@pytest.fixture
def client(url: str, key: str, retries: Retries) -> Iterator[Client]:
    with Client(url, key, retry=retries.policy) as c:
        yield c


@pytest.fixture
async def aclient(url: str, key: str, retries: Retries) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(url, key, retry=retries.policy) as c:
        yield c
