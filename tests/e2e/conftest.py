"""The whole suite as local processes under supervisord (as ``make up`` runs it), on a
database and vhost of its own."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.datamover.harness import BUCKET, MotoServer
from tools.cluster import (
    ClusterConfig,
    LocalCluster,
    drop_database,
    drop_vhost,
    prepare_database,
    prepare_vhost,
)


def free_base_port() -> int:
    """A base port with the 200 ports above it free, so parallel test runs don't collide."""
    import random
    import socket

    for _ in range(50):
        base = random.randrange(20_000, 40_000, 200)
        ports = [base, base + 1, base + 3, base + 4, *range(base + 100, base + 104)]
        try:
            for port in ports:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range for the test cluster")


BASE_PORT = free_base_port()
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="session")
def e2e_moto() -> Iterator[MotoServer]:
    """The cluster's ``s3`` tier: ``moto_server`` on loopback."""
    with MotoServer.running() as server:
        yield server


def storage_env(root: Path, moto: MotoServer) -> dict[str, str]:
    """Every service's tiers: ``local`` and ``archive`` in ``root``, ``s3`` on moto."""
    return {
        "STRATUS_STORAGE__LOCAL__ROOT": str(root / "local"),
        "STRATUS_STORAGE__ARCHIVE__ROOT": str(root / "archive"),
        "STRATUS_STORAGE__S3__ENDPOINT_URL": moto.url,
        "STRATUS_STORAGE__S3__BUCKET": BUCKET,
        "STRATUS_STORAGE__S3__REGION": "us-east-1",
        "STRATUS_STORAGE__S3__ACCESS_KEY_ID": "testing",
        "STRATUS_STORAGE__S3__SECRET_ACCESS_KEY": "testing",
        "STRATUS_STORAGE__FSYNC": "false",
    }


@pytest.fixture(scope="session")
def cluster(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, e2e_moto: MotoServer
) -> Iterator[LocalCluster]:
    name = test_env["STRATUS_POSTGRES__DATABASE"] + "_e2e"
    prepare_database(name)
    prepare_vhost(name)
    env = {
        **storage_env(Path(tmp_path_factory.mktemp("tiers")), e2e_moto),
        **test_env,
        "STRATUS_POSTGRES__DATABASE": name,
        "STRATUS_RABBIT__VHOST": name,
        "STRATUS_LOG_LEVEL": "INFO",
        "STRATUS_REAPER_INTERVAL_S": "0.5",
        "STRATUS_WORKER_TTL_S": "5",
    }
    cfg = ClusterConfig(
        run_dir=Path(tmp_path_factory.mktemp("cluster")),
        env=env,
        gateway_port=BASE_PORT,
        scheduler_port=BASE_PORT + 1,
        datamover_port=BASE_PORT + 3,
        tenant_port=BASE_PORT + 4,
        worker_base_port=BASE_PORT + 100,
        workers=2,
        worker_env={
            "STRATUS_CONCURRENCY": "2",
            "STRATUS_LEASE_S": "3",
            "STRATUS_HEARTBEAT_INTERVAL_S": "0.5",
        },
    )
    with running(cfg, name) as c:
        yield c


@contextmanager
def running(cfg: ClusterConfig, name: str, *, timeout: float = 90) -> Iterator[LocalCluster]:
    """The cluster of ``cfg`` started (its database and vhost ``name`` prepared before); on
    exit it is stopped and both are dropped, also when the start fails."""
    c = LocalCluster(cfg)
    try:
        c.start(timeout=timeout)
        yield c
    finally:
        c.stop()
        drop_database(name)
        drop_vhost(name)


@pytest.fixture(scope="session")
async def api(cluster: LocalCluster) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=cluster.url("gateway"), timeout=10) as c:
        yield c


async def new_tenant_key(api: httpx.AsyncClient, name: str) -> dict[str, str]:
    r = await api.post("/v1/tenants", json={"name": f"{name}-{time.time_ns()}"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    k = await api.post(f"/v1/tenants/{r.json()['id']}/keys", json={"name": "k"}, headers=ADMIN)
    assert k.status_code == 201, k.text
    return {"Authorization": f"Bearer {k.json()['key']}"}


async def wait_for_state(
    api: httpx.AsyncClient,
    job_id: str,
    headers: dict[str, str],
    states: set[str],
    timeout: float = 60,
) -> dict[str, Any]:
    import asyncio

    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await api.get(f"/v1/jobs/{job_id}", headers=headers)
        if r.status_code == 200:
            job = r.json()
            if job["state"] in states:
                return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} not in {states} after {timeout}s: {job}")
