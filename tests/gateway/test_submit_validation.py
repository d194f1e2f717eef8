"""What ``POST /v1/jobs`` checks before anything is stored: dataset names, strict types, the
inputs' ``.npy`` headers against the kernel's shape rules, the predicted footprint against the
job memory limit and the storage quota, and whether any worker pool can run the device."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Dataset, Job, Worker, WorkerPool
from tests.gateway.conftest import ADMIN, TenantKey, gateway_client, make_tenant
from tests.gateway.test_jobs_api import assert_problem

Array = np.ndarray[Any, Any]
X = "\N{MULTIPLICATION SIGN}"


def npy(arr: Array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=arr.dtype.hasobject)
    return buf.getvalue()


async def put(client: httpx.AsyncClient, t: TenantKey, name: str, content: bytes) -> None:
    r = await client.put(f"/v1/datasets/{name}", content=content, headers=t.headers)
    assert r.status_code == 201, r.text


async def jobs_of(sessions: async_sessionmaker[AsyncSession], t: TenantKey) -> int:
    async with sessions() as s:
        n = await s.scalar(
            select(func.count()).select_from(Job).where(Job.tenant_id == uuid.UUID(t.tenant_id))
        )
    return int(n or 0)


async def refused(
    client: httpx.AsyncClient, t: TenantKey, body: dict[str, Any], status: int = 422
) -> dict[str, Any]:
    return assert_problem(await client.post("/v1/jobs", json=body, headers=t.headers), status)


def locs(problem: dict[str, Any]) -> list[list[Any]]:
    return [e["loc"] for e in problem.get("errors") or []]


def msg_at(problem: dict[str, Any], loc: list[Any]) -> str:
    return " ".join(e["msg"] for e in problem.get("errors") or [] if e["loc"] == loc)


# --- the inputs' headers ----------------------------------------------------------------------

ARRAYS: dict[str, Any] = {
    "a34.npy": np.ones((3, 4)),
    "b52.npy": np.ones((5, 2)),
    "b42.npy": np.ones((4, 2)),
    "x4.npy": np.ones(4),
    "x5.npy": np.ones(5),
    "cube.npy": np.ones((2, 2, 2)),
    "f32.npy": np.ones(4, dtype=np.float32),
    "c128.npy": np.ones(4, dtype=np.complex128),
    "i8.npy": np.arange(4, dtype=np.int8),
    "obj.npy": np.array([1, "a"], dtype=object),
    "b6.npy": np.ones((3, 6)),
    "b7.npy": np.ones((3, 7)),
}


@pytest.fixture
async def shapes(client: httpx.AsyncClient) -> TenantKey:
    t = await make_tenant(client)
    for name, arr in ARRAYS.items():
        await put(client, t, name, npy(arr))
    await put(client, t, "t.txt", b"not an array at all")
    # a header that promises 10**6 float64 values, followed by 8 bytes
    lying = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**6,)}
    np.lib.format.write_array_header_1_0(lying, header)
    await put(client, t, "short.npy", lying.getvalue() + bytes(8))
    return t


def saxpy(x: str, y: str) -> dict[str, Any]:
    return {
        "kernel": "saxpy",
        "params": {"a": 2},
        "inputs": {"x": x, "y": y},
        "outputs": {"y": "o"},
    }


def matmul(a: str, b: str) -> dict[str, Any]:
    return {"kernel": "matmul", "inputs": {"a": a, "b": b}, "outputs": {"c": "c.npy"}}


def histogram(data: str, bins: int = 4) -> dict[str, Any]:
    return {
        "kernel": "histogram",
        "params": {"bins": bins, "range": [0, 1]},
        "inputs": {"data": data},
    }


def stencil(grid: str) -> dict[str, Any]:
    return {
        "kernel": "stencil2d",
        "params": {"iterations": 1},
        "inputs": {"grid": grid},
        "outputs": {"grid": "o.npy"},
    }


def nbody(bodies: str) -> dict[str, Any]:
    return {
        "kernel": "nbody",
        "params": {"steps": 1, "dt": 0.1},
        "inputs": {"bodies": bodies},
        "outputs": {"bodies": "o.npy"},
    }


BAD_INPUTS = [
    (histogram("t.txt"), "data", "not a .npy file"),
    (histogram("obj.npy"), "data", "dtype object is not supported"),
    (histogram("c128.npy"), "data", "complex128"),
    (histogram("cube.npy"), "data", "1-D"),
    (histogram("short.npy"), "data", "truncated"),
    (matmul("a34.npy", "b52.npy"), "b", f"matmul: a is 3{X}4 but b is 5{X}2"),
    (matmul("x4.npy", "b42.npy"), "a", "2-D"),
    (saxpy("x4.npy", "x5.npy"), "y", "4"),
    (saxpy("f32.npy", "x4.npy"), "x", "float32"),
    (stencil("x4.npy"), "grid", "2-D"),
    (nbody("b6.npy"), "bodies", f"n{X}7"),
]


@pytest.mark.parametrize(
    ("body", "culprit", "says"), BAD_INPUTS, ids=[f"{b['kernel']}-{c}" for b, c, _ in BAD_INPUTS]
)
async def test_an_input_that_cannot_run_is_named_at_submit(
    client: httpx.AsyncClient,
    shapes: TenantKey,
    sessions: async_sessionmaker[AsyncSession],
    body: dict[str, Any],
    culprit: str,
    says: str,
) -> None:
    problem = await refused(client, shapes, body)
    loc = ["body", "inputs", culprit]
    assert loc in locs(problem), problem
    assert says in msg_at(problem, loc), problem
    assert "pickle" not in json.dumps(problem)
    assert await jobs_of(sessions, shapes) == 0


@pytest.mark.parametrize(
    "body",
    [
        matmul("a34.npy", "b42.npy"),
        saxpy("x4.npy", "x4.npy"),
        histogram("i8.npy"),
        histogram("x5.npy"),
        stencil("b6.npy"),
        nbody("b7.npy"),
    ],
    ids=["matmul", "saxpy", "histogram-int8", "histogram", "stencil2d", "nbody"],
)
async def test_inputs_that_fit_are_accepted(
    client: httpx.AsyncClient, shapes: TenantKey, body: dict[str, Any]
) -> None:
    r = await client.post("/v1/jobs", json=body, headers=shapes.headers)
    assert r.status_code == 201, r.text


# --- footprint: the storage quota and the job memory limit ------------------------------------


async def test_an_output_over_the_storage_quota_is_413_with_its_predicted_size(
    client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await make_tenant(client)
    r = await client.patch(
        f"/v1/tenants/{t.tenant_id}", json={"quotas": {"storage_bytes": 1_000_000}}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    await put(client, t, "a.npy", npy(np.ones((4000, 1))))
    await put(client, t, "b.npy", npy(np.ones((1, 4000))))
    problem = await refused(client, t, matmul("a.npy", "b.npy"), 413)
    assert str(4000 * 4000 * 8) in str(problem["detail"]), problem
    assert await jobs_of(sessions, t) == 0
    async with sessions() as s:
        names = await s.scalars(
            select(Dataset.name).where(Dataset.tenant_id == uuid.UUID(t.tenant_id))
        )
        assert sorted(names) == ["a.npy", "b.npy"]
    # what fits is accepted; overwriting a dataset frees its bytes first
    await put(client, t, "small-a.npy", npy(np.ones((100, 1))))
    await put(client, t, "small-b.npy", npy(np.ones((1, 100))))
    r = await client.post("/v1/jobs", json=matmul("small-a.npy", "small-b.npy"), headers=t.headers)
    assert r.status_code == 201, r.text
    await put(client, t, "big.npy", npy(np.ones(100_000)))  # 800 KB of the 1 MB
    again = {**saxpy("big.npy", "big.npy"), "outputs": {"y": "big.npy"}}
    r = await client.post("/v1/jobs", json=again, headers=t.headers)
    assert r.status_code == 201, r.text
    assert_problem(
        await client.post("/v1/jobs", json=saxpy("big.npy", "big.npy"), headers=t.headers), 413
    )


@pytest.fixture
async def small_memory(
    monkeypatch: pytest.MonkeyPatch, test_env: dict[str, str], tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setenv("STRATUS_LIMITS__JOB_MEMORY_MB", "1")
    async with gateway_client(tmp_path) as c:
        yield c


async def test_a_footprint_over_the_job_memory_limit_is_refused(
    small_memory: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    t = await make_tenant(small_memory)
    await put(small_memory, t, "a.npy", npy(np.ones((400, 1))))
    await put(small_memory, t, "b.npy", npy(np.ones((1, 400))))
    problem = await refused(small_memory, t, matmul("a.npy", "b.npy"))
    detail = str(problem["detail"])
    assert "memory" in detail
    assert str(2**20) in detail  # the limit
    output = 400 * 400 * 8 + 128  # the .npy file: header and data
    assert str(2 * 400 * 8 + output) in detail  # inputs and output
    assert await jobs_of(sessions, t) == 0
    await put(small_memory, t, "grid.npy", npy(np.ones((100, 100))))  # 3 x 80 KB
    r = await small_memory.post("/v1/jobs", json=stencil("grid.npy"), headers=t.headers)
    assert r.status_code == 201, r.text


# --- parameter bounds and strict types --------------------------------------------------------


async def test_histogram_bins_are_bounded(client: httpx.AsyncClient, shapes: TenantKey) -> None:
    problem = await refused(client, shapes, histogram("x5.npy", bins=10**7))
    assert ["body", "params", "bins"] in locs(problem), problem
    r = await client.post("/v1/jobs", json=histogram("x5.npy", bins=10**6), headers=shapes.headers)
    assert r.status_code == 201, r.text


MC = {"kernel": "montecarlo_pi", "params": {"samples": 10}}
NOT_STRICT = [
    ({"kernel": "montecarlo_pi", "params": {"samples": True}}, ["body", "params", "samples"]),
    ({"kernel": "montecarlo_pi", "params": {"samples": "10"}}, ["body", "params", "samples"]),
    ({"kernel": "montecarlo_pi", "params": {"samples": 10.5}}, ["body", "params", "samples"]),
    ({**saxpy("x4.npy", "x4.npy"), "params": {"a": "2"}}, ["body", "params", "a"]),
    ({**saxpy("x4.npy", "x4.npy"), "params": {"a": False}}, ["body", "params", "a"]),
    ({**histogram("x4.npy"), "params": {"bins": 4, "range": [0, True]}}, None),
    ({**MC, "priority": True}, ["body", "priority"]),
    ({**MC, "priority": "5"}, ["body", "priority"]),
    ({**MC, "timeout_s": 60.5}, ["body", "timeout_s"]),
    ({**MC, "max_retries": False}, ["body", "max_retries"]),
    ({**MC, "labels": {"k": 1}}, ["body", "labels", "k"]),
]


@pytest.mark.parametrize(("body", "loc"), NOT_STRICT, ids=[str(i) for i in range(len(NOT_STRICT))])
async def test_types_are_strict(
    client: httpx.AsyncClient, shapes: TenantKey, body: dict[str, Any], loc: list[str] | None
) -> None:
    problem = await refused(client, shapes, body)
    if loc is not None:
        assert loc in locs(problem), problem


async def test_a_number_with_no_fraction_is_an_integer(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    """As in JSON Schema, whose ``integer`` the OpenAPI document declares: 10.0 is 10."""
    body = {**MC, "params": {"samples": 10.0, "seed": 3.0}, "priority": 7.0, "timeout_s": 60.0}
    r = await client.post("/v1/jobs", json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["params"] == {"samples": 10, "seed": 3}
    assert (job["priority"], job["timeout_s"]) == (7, 60)
    t = await make_tenant(client)
    patch = {"weight": 2.0, "quotas": {"storage_bytes": 15345.0}}
    r = await client.patch(f"/v1/tenants/{t.tenant_id}", json=patch, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["quotas"]["storage_bytes"] == 15345


@pytest.mark.parametrize(
    "body",
    [
        {"name": "ok", "weight": True},
        {"name": "ok", "weight": "2"},
        {"name": "ok", "quotas": {"max_running_jobs": True}},
        {"name": "ok", "quotas": {"storage_bytes": "100"}},
        {"name": "ok", "quotas": {"requests_per_second": False}},
    ],
)
async def test_tenant_admin_bodies_are_strict(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    assert_problem(await client.post("/v1/tenants", json=body, headers=ADMIN), 422)
    t = await make_tenant(client)
    patch = {k: v for k, v in body.items() if k != "name"}
    r = await client.patch(f"/v1/tenants/{t.tenant_id}", json=patch, headers=ADMIN)
    assert_problem(r, 422)


# --- names ------------------------------------------------------------------------------------

ODD_BODIES = [
    '{"kernel":"saxpy","params":{"a":1},"inputs":{"x":"x","y":"y"},"outputs":{"y":"a\\u0000b"}}',
    '{"kernel":"saxpy","params":{"a":1},"inputs":{"x":"x","y":"y"},"outputs":{"y":"\\ud800"}}',
    '{"kernel":"saxpy","params":{"a":1},"inputs":{"\\ud800":"x","y":"y"},"outputs":{"y":"y"}}',
    '{"kernel":"montecarlo_pi","params":{"samples":10},"outputs":{"\\ud800":"y"}}',
    '{"kernel":"montecarlo_pi","params":{"samples":10},"labels":{"\\ud800":"x"}}',
    '{"kernel":"montecarlo_pi","params":{"samples":10},"labels":{"k":"\\ud800"}}',
    '{"kernel":"montecarlo_pi","params":{"samples":10,"seed":"\\ud800"}}',
    '{"kernel":"\\ud800","params":{"samples":10}}',
]


@pytest.mark.parametrize("body", ODD_BODIES, ids=[str(i) for i in range(len(ODD_BODIES))])
async def test_odd_text_is_a_422_that_renders(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    sessions: async_sessionmaker[AsyncSession],
    body: str,
) -> None:
    r = await client.post(
        "/v1/jobs", content=body, headers={**tenant.headers, "Content-Type": "application/json"}
    )
    problem = assert_problem(r, 422)
    assert problem["errors"], problem
    assert await jobs_of(sessions, tenant) == 0


@pytest.mark.parametrize("name", ["../{other}/x", "/abs", "", "a//b", "a/./b", "a/", "x" * 256])
async def test_dataset_names_follow_the_upload_rule_at_submit(
    client: httpx.AsyncClient,
    shapes: TenantKey,
    tenant: TenantKey,
    sessions: async_sessionmaker[AsyncSession],
    name: str,
) -> None:
    name = name.format(other=tenant.tenant_id)
    problem = await refused(client, shapes, {**stencil("b6.npy"), "outputs": {"grid": name}})
    assert ["body", "outputs", "grid"] in locs(problem), problem
    problem = await refused(client, shapes, stencil(name))
    assert ["body", "inputs", "grid"] in locs(problem), problem
    assert await jobs_of(sessions, shapes) == 0


async def test_two_outputs_naming_one_dataset_are_refused(
    client: httpx.AsyncClient, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared import kernels

    two = kernels.KernelSpec(
        "two_outputs", "test", kernels.MatmulParams, outputs=("p", "q"), devices=("cpu",)
    )
    monkeypatch.setitem(kernels.CATALOGUE, two.name, two)
    body: dict[str, Any] = {"kernel": "two_outputs", "outputs": {"p": "same.npy", "q": "same.npy"}}
    problem = await refused(client, tenant, body)
    assert ["body", "outputs", "q"] in locs(problem), problem
    body["outputs"] = {"p": "one.npy", "q": "two.npy"}
    r = await client.post("/v1/jobs", json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text  # a kernel without shape rules keeps working


# --- devices no pool can run ------------------------------------------------------------------


@pytest.fixture
async def pools(
    test_env: dict[str, str], tmp_path: Path, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[tuple[httpx.AsyncClient, async_sessionmaker[AsyncSession]]]:
    """A fresh gateway (nothing remembered about the pools) and clean pool tables after."""
    async with gateway_client(tmp_path) as c:
        yield c, sessions
    async with sessions() as s, s.begin():
        await s.execute(delete(WorkerPool))
        await s.execute(delete(Worker).where(Worker.id.like("test-pool-%")))


async def set_pool(s: AsyncSession, pool: str, max_workers: int) -> None:
    now = datetime.now(UTC)
    s.add(
        WorkerPool(
            pool=pool,
            backend="local",
            min_workers=0,
            max_workers=max_workers,
            target_jobs_per_worker=1.0,
            cooldown_s=60.0,
            current_workers=0,
            desired_workers=0,
            queued_jobs=0,
            running_jobs=0,
            held_jobs=0,
            decisions=[],
            updated_at=now,
        )
    )


async def test_a_device_no_pool_can_run_is_refused(
    pools: tuple[httpx.AsyncClient, async_sessionmaker[AsyncSession]],
) -> None:
    client, sessions = pools
    t = await make_tenant(client)
    async with sessions() as s, s.begin():
        await set_pool(s, "cpu", 2)
        await set_pool(s, "cuda", 0)
    problem = await refused(client, t, {**MC, "device": "cuda"})
    assert "cuda" in str(problem["detail"]), problem
    assert ["body", "device"] in locs(problem), problem
    for device in ("cpu", "any"):
        r = await client.post("/v1/jobs", json={**MC, "device": device}, headers=t.headers)
        assert r.status_code == 201, r.text


async def test_any_is_refused_only_when_no_pool_can_run_it(
    pools: tuple[httpx.AsyncClient, async_sessionmaker[AsyncSession]],
) -> None:
    client, sessions = pools
    t = await make_tenant(client)
    async with sessions() as s, s.begin():
        await set_pool(s, "cpu", 0)
        await set_pool(s, "cuda", 0)
    problem = await refused(client, t, {**MC, "device": "any"})
    assert ["body", "device"] in locs(problem), problem


async def test_a_live_worker_can_run_its_device_whatever_the_pool_maximum(
    pools: tuple[httpx.AsyncClient, async_sessionmaker[AsyncSession]],
) -> None:
    client, sessions = pools
    t = await make_tenant(client)
    async with sessions() as s, s.begin():
        await set_pool(s, "cuda", 0)
        s.add(Worker(id=f"test-pool-{uuid.uuid4().hex[:8]}", device="cuda", concurrency=1))
    r = await client.post("/v1/jobs", json={**MC, "device": "cuda"}, headers=t.headers)
    assert r.status_code == 201, r.text
