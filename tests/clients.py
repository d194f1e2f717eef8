"""What the SDK and CLI tests share: a cluster with the ``local`` and ``archive`` tiers, and a
new tenant's key made through the SDK's admin methods."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from stratus_client import Client

from tests.e2e.conftest import own_cluster
from tests.tiers import disk_tiers
from tools.cluster import LocalCluster


@contextmanager
def tiered_cluster(
    name: str,
    test_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    *,
    concurrency: int,
) -> Iterator[LocalCluster]:
    """Every service, with the ``local`` and ``archive`` tiers (no ``s3``), one worker of
    ``concurrency`` slots."""
    root = Path(tmp_path_factory.mktemp(f"{name}-tiers"))
    env = {
        **disk_tiers(root),
        # webhooks reach a test's receiver on 127.0.0.2; 127.0.0.1 stays refused
        "STRATUS_WEBHOOKS__ALLOW": "127.0.0.2/32",
        "STRATUS_WEBHOOKS__BACKOFF_S": "0.2",
        "STRATUS_WEBHOOKS__INTERVAL_S": "0.2",
    }
    with own_cluster(
        name,
        test_env,
        tmp_path_factory,
        env=env,
        workers=1,
        worker_env={
            "STRATUS_CONCURRENCY": str(concurrency),
            "STRATUS_HEARTBEAT_INTERVAL_S": "0.5",
        },
    ) as cluster:
        yield cluster


def new_tenant_key(admin: Client, name: str, key_name: str, **quotas: Any) -> str:
    """A new tenant with ``quotas`` (made through the SDK): a key of it with every scope."""
    tenant = admin.admin.create_tenant(f"{name}-{time.time_ns()}", quotas=quotas)
    return admin.admin.create_key(tenant.id, key_name).key
