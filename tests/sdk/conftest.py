"""The Python SDK (``clients/python``) against a live cluster: one cluster for the whole
folder (its start costs seconds), every test on a tenant of its own, made through the SDK's
admin methods."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from stratus_client import AsyncClient, Client, RetryEvent, RetryPolicy

from tests.clients import new_tenant_key, tiered_cluster
from tests.conftest import ADMIN_KEY
from tools.cluster import LocalCluster

MC: dict[str, Any] = {"samples": 1000, "seed": 1}  # montecarlo_pi: done in milliseconds


@pytest.fixture(scope="package")
def sdk_cluster(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """Every service, with the ``local`` and ``archive`` tiers (no ``s3``)."""
    with tiered_cluster("sdk", test_env, tmp_path_factory, concurrency=2) as cluster:
        yield cluster


@pytest.fixture(scope="package")
def url(sdk_cluster: LocalCluster) -> str:
    return sdk_cluster.url("gateway")


@pytest.fixture(scope="package")
def admin(url: str) -> Iterator[Client]:
    with Client(url, ADMIN_KEY) as c:
        yield c


def new_key(admin: Client, name: str, **quotas: Any) -> str:
    """A new tenant with ``quotas``: a key of it with every scope."""
    return new_tenant_key(admin, name, "sdk-test", **quotas)


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
