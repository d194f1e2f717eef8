"""The whole suite as local processes under supervisord (as ``make up`` runs it), on a
database and vhost of its own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.databases import copy_database, delete_vhost, new_vhost
from tests.datamover.harness import BUCKET, MotoServer
from tests.servers import unacked_messages, unfinished_jobs
from tests.tiers import disk_tiers
from tools.cluster import ClusterConfig, LocalCluster, drop_database
from tools.provision import postgres_settings


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
# what a module's last jobs may need to finish (the e2e jobs run for a second or less)
IDLE_WITHIN_S = 60.0
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules on the shared cluster (``e2e_cluster``) run after the modules with a
    cluster of their own, so that two clusters never run side by side."""
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if here in item.path.parents]
    ours = [items[i] for i in slots]
    ours.sort(key=lambda item: "e2e_cluster" in getattr(item, "fixturenames", ()))
    for i, item in zip(slots, ours, strict=True):
        items[i] = item


@pytest.fixture(scope="session")
def e2e_moto() -> Iterator[MotoServer]:
    """The cluster's ``s3`` tier: ``moto_server`` on loopback."""
    with MotoServer.running() as server:
        yield server


def storage_env(root: Path, moto: MotoServer) -> dict[str, str]:
    """Every service's tiers: ``local`` and ``archive`` in ``root``, ``s3`` on moto."""
    return {
        **disk_tiers(root),
        "STRATUS_STORAGE__S3__ENDPOINT_URL": moto.url,
        "STRATUS_STORAGE__S3__BUCKET": BUCKET,
        "STRATUS_STORAGE__S3__REGION": "us-east-1",
        "STRATUS_STORAGE__S3__ACCESS_KEY_ID": "testing",
        "STRATUS_STORAGE__S3__SECRET_ACCESS_KEY": "testing",
    }


@contextmanager
def own_cluster(
    suffix: str,
    test_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    *,
    env: dict[str, str],
    base: int | None = None,
    timeout: float = 90,
    **config: Any,
) -> Iterator[LocalCluster]:
    """A cluster on a database and vhost of its own (the test run's, ``_<suffix>``), with
    ``env`` over the test run's settings, its ports from ``base`` (a free range by default)
    and the rest of ``ClusterConfig`` from ``config``; stopped and dropped on exit."""
    name = f"{test_env['STRATUS_POSTGRES__DATABASE']}_{suffix}"
    copy_database(name, test_env["STRATUS_POSTGRES__DATABASE"])
    new_vhost(name)
    base = free_base_port() if base is None else base
    cfg = ClusterConfig(
        run_dir=Path(tmp_path_factory.mktemp(f"{suffix}-cluster")),
        env={
            **test_env,
            "STRATUS_POSTGRES__DATABASE": name,
            "STRATUS_RABBIT__VHOST": name,
            "STRATUS_LOG_LEVEL": "INFO",
            "STRATUS_REAPER_INTERVAL_S": "0.5",
            "STRATUS_WORKER_TTL_S": "5",
            **env,
        },
        gateway_port=base,
        scheduler_port=base + 1,
        datamover_port=base + 3,
        worker_base_port=base + 100,
        **config,
    )
    with running(cfg, name, timeout=timeout) as c:
        yield c
        assert_idle(cfg.env, name)


# One cluster for the e2e modules that need no settings of their own: its processes start
# with the first of them and end with the last, so they never compete with the tests of
# other directories (nor hold the database connections those need). A module with settings
# of its own overrides ``cluster`` with an ``own_cluster``.
@pytest.fixture(scope="package")
def e2e_cluster(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, e2e_moto: MotoServer
) -> Iterator[LocalCluster]:
    with own_cluster(
        "e2e",
        test_env,
        tmp_path_factory,
        env=storage_env(Path(tmp_path_factory.mktemp("tiers")), e2e_moto),
        base=BASE_PORT,
        workers=2,
        worker_env={
            "STRATUS_CONCURRENCY": "2",
            "STRATUS_LEASE_S": "3",
            "STRATUS_HEARTBEAT_INTERVAL_S": "0.5",
        },
    ) as c:
        yield c


@pytest.fixture(scope="module")
def cluster(e2e_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The e2e cluster, checked idle when the module ends: a module that leaves work behind
    fails itself rather than slowing the modules after it."""
    yield e2e_cluster
    assert_idle(e2e_cluster.cfg.env, e2e_cluster.cfg.env["STRATUS_RABBIT__VHOST"])


def assert_idle(env: dict[str, str], name: str, *, within_s: float = IDLE_WITHIN_S) -> None:
    """The cluster of database and vhost ``name`` is idle within ``within_s``: no job left
    QUEUED or RUNNING, no message delivered and not acknowledged. A module that leaves work
    behind fails here rather than slowing whatever runs next."""
    pg = postgres_settings(env).model_copy(update={"database": name})
    deadline = time.monotonic() + within_s
    while True:
        busy = {**unfinished_jobs(pg), **unacked_messages(name)}
        if not busy or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not busy, f"the cluster is not idle {within_s:.0f}s after its module: {busy}"


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
        delete_vhost(name)


@pytest.fixture(scope="module")
async def api(cluster: LocalCluster) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=cluster.url("gateway"), timeout=30) as c:
        yield c


async def new_tenant(
    api: httpx.AsyncClient, name: str, **quotas: Any
) -> tuple[str, dict[str, str]]:
    """A new tenant with ``quotas``: its id, and the headers of a key with every scope."""
    r = await api.post(
        "/v1/tenants", json={"name": f"{name}-{time.time_ns()}", "quotas": quotas}, headers=ADMIN
    )
    assert r.status_code == 201, r.text
    tid: str = r.json()["id"]
    k = await api.post(f"/v1/tenants/{tid}/keys", json={"name": "k"}, headers=ADMIN)
    assert k.status_code == 201, k.text
    return tid, {"Authorization": f"Bearer {k.json()['key']}"}


async def new_tenant_key(api: httpx.AsyncClient, name: str, **quotas: Any) -> dict[str, str]:
    return (await new_tenant(api, name, **quotas))[1]


@asynccontextmanager
async def another_gateway(
    env: dict[str, str], port: int, *, without: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """A further gateway process with ``env`` (over this process's environment, less the
    settings whose names start with ``without``) on ``port``, ready when the block starts,
    stopped when it ends."""
    merged = {**os.environ, **env, "STRATUS_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.gateway"],
        env={k: v for k, v in merged.items() if not (without and k.startswith(without))},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, "the gateway exited"
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the gateway was not ready within 60 s"
                await asyncio.sleep(0.1)
            yield client
    finally:
        proc.terminate()
        proc.wait(timeout=30)


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
