"""The chaos suite's workload: tenants with deterministic input datasets and a fixed list of
jobs over every CPU kernel (same seed, same list) with arrays of ``montecarlo_pi`` elements
among them, submitted with idempotency keys and retried through outages until the gateway
answers. An array's elements count toward the run's jobs: ``job_specs(200, ...)`` makes 200
jobs in all, singles and elements together."""

from __future__ import annotations

import asyncio
import io
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

RETRYABLE = {429, 500, 502, 503, 504}

# Of the run's jobs, this share are elements of arrays: ``ARRAYS_PER_200`` arrays per 200
# jobs (at least that many), every tenant with one or two of them.
ARRAY_SHARE = 0.4
ARRAYS_PER_200 = 4
# Each array's ``max_concurrent`` in turn (None: no bound). The last array of a run has a
# bound, so that it runs long enough for a fault to land while its elements finish.
ARRAY_MAX_CONCURRENT: tuple[int | None, ...] = (3, None, 4, 2)
# The samples of an element: a bounded array's run long enough (a few tenths of a second)
# that a worker killed while it holds them, or PostgreSQL stopped while they run, catches
# them mid-run; an array without a bound runs short ones, many at once. Arrays with the same
# samples check each other's results (element i of each has the seed i).
ARRAY_SAMPLES = 100_000_000
SHORT_ARRAY_SAMPLES = 4_000_000


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass(frozen=True)
class JobSpec:
    index: int
    tenant: Tenant
    body: dict[str, Any]

    @property
    def idempotency_key(self) -> str:
        return f"chaos-{self.index}"

    @property
    def array(self) -> dict[str, Any] | None:
        array: dict[str, Any] | None = self.body.get("array")
        return array

    @property
    def units(self) -> int:
        """The jobs this submission makes: an array's elements, else one."""
        return int(self.array["size"]) if self.array else 1


def _npy(arr: np.ndarray[Any, Any]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def input_arrays() -> dict[str, bytes]:
    """The inputs every tenant uploads (the same bytes every run)."""
    rng = np.random.default_rng(2026)
    bodies = np.concatenate([rng.standard_normal((96, 6)), rng.uniform(0.5, 1.5, (96, 1))], axis=1)
    arrays = {
        "in/x.npy": rng.standard_normal(50_000),
        "in/y.npy": rng.standard_normal(50_000),
        "in/a.npy": rng.standard_normal((96, 96)),
        "in/b.npy": rng.standard_normal((96, 96)),
        "in/grid.npy": rng.uniform(0.0, 100.0, (128, 128)),
        "in/data.npy": rng.standard_normal(100_000),
        "in/bodies.npy": bodies,
    }
    return {name: _npy(arr) for name, arr in arrays.items()}


def job_body(index: int) -> dict[str, Any]:
    """Job ``index`` of the mix: kernels in turn, deterministic params and inputs."""
    common = {"timeout_s": 120, "max_retries": 20, "labels": {"chaos": "1"}}
    kind = index % 6
    if kind == 0:
        return {
            "kernel": "montecarlo_pi",
            "params": {"samples": 200_000, "seed": index % 7},
            **common,
        }
    if kind == 1:
        return {
            "kernel": "histogram",
            "params": {"bins": 64, "range": [-4.0, 4.0]},
            "inputs": {"data": "in/data.npy"},
            **common,
        }
    if kind == 2:
        return {
            "kernel": "saxpy",
            "params": {"a": 2.0},
            "inputs": {"x": "in/x.npy", "y": "in/y.npy"},
            "outputs": {"y": f"out/saxpy-{index}.npy"},
            **common,
        }
    if kind == 3:
        return {
            "kernel": "matmul",
            "params": {},
            "inputs": {"a": "in/a.npy", "b": "in/b.npy"},
            "outputs": {"c": f"out/matmul-{index}.npy"},
            **common,
        }
    if kind == 4:
        return {
            "kernel": "stencil2d",
            "params": {"iterations": 40},
            "inputs": {"grid": "in/grid.npy"},
            "outputs": {"grid": f"out/stencil-{index}.npy"},
            **common,
        }
    return {
        "kernel": "nbody",
        "params": {"steps": 4, "dt": 0.01},
        "inputs": {"bodies": "in/bodies.npy"},
        "outputs": {"bodies": f"out/nbody-{index}.npy"},
        **common,
    }


def array_body(k: int, size: int) -> dict[str, Any]:
    """Array ``k`` of the mix: ``size`` montecarlo_pi elements, the index as the seed."""
    array: dict[str, Any] = {"size": size, "index_param": "seed"}
    bound = ARRAY_MAX_CONCURRENT[k % len(ARRAY_MAX_CONCURRENT)]
    if bound is not None:
        array["max_concurrent"] = bound
    return {
        "kernel": "montecarlo_pi",
        "params": {"samples": SHORT_ARRAY_SAMPLES if bound is None else ARRAY_SAMPLES},
        "array": array,
        "timeout_s": 120,
        "max_retries": 20,
        "labels": {"chaos": "1"},
    }


def array_sizes(count: int) -> list[int]:
    """The sizes of the arrays of a run of ``count`` jobs: ``ARRAY_SHARE`` of them, in
    ``ARRAYS_PER_200`` arrays per 200 jobs of as equal sizes as may be (none for a run too
    small to give each array two elements)."""
    arrays = max(ARRAYS_PER_200, ARRAYS_PER_200 * count // 200)
    elements = int(count * ARRAY_SHARE)
    if elements < 2 * arrays:
        return []
    return [elements // arrays + (k < elements % arrays) for k in range(arrays)]


def job_specs(count: int, tenants: list[Tenant]) -> list[JobSpec]:
    """``count`` jobs: single jobs with the arrays spread evenly among them (array ``k`` at
    the middle of the ``k``-th of as many equal stretches), tenants in turn."""
    sizes = array_sizes(count)
    singles = count - sum(sizes)
    total = singles + len(sizes)
    at = {(2 * k + 1) * total // (2 * len(sizes)): k for k in range(len(sizes))}
    specs, single = [], 0
    for i in range(total):
        if i in at:
            k = at[i]
            specs.append(JobSpec(i, tenants[k % len(tenants)], array_body(k, sizes[k])))
        else:
            specs.append(JobSpec(i, tenants[single % len(tenants)], job_body(single)))
            single += 1
    return specs


async def call(
    api: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    ok: tuple[int, ...],
    deadline_s: float = 300,
    **kwargs: Any,
) -> httpx.Response:
    """One request, repeated through outages (503/429/connection errors) until it answers
    with a status in ``ok``; anything else is an error of the test or of Stratus."""
    deadline = time.monotonic() + deadline_s
    delay = 0.2
    while True:
        try:
            r = await api.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if r.status_code in ok:
                return r
            if r.status_code not in RETRYABLE:
                raise AssertionError(f"{method} {url}: {r.status_code} {r.text[:500]}")
            last = f"{r.status_code} {r.text[:200]}"
            retry_after = r.headers.get("Retry-After", "")
            if retry_after.isdigit():
                delay = max(delay, min(float(retry_after), 5.0))
        if time.monotonic() > deadline:
            raise AssertionError(f"{method} {url}: no answer in {deadline_s}s, last {last}")
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 3.0)


async def create_tenants(
    api: httpx.AsyncClient, admin_key: str, count: int, *, run: str
) -> list[Tenant]:
    admin = {"Authorization": f"Bearer {admin_key}"}
    tenants = []
    for n in range(count):
        name = f"chaos-{run}-{n}"
        r = await call(
            api,
            "POST",
            "/v1/tenants",
            ok=(201,),
            json={"name": name, "weight": 1, "quotas": {"requests_per_second": 1000}},
            headers=admin,
        )
        tid = r.json()["id"]
        k = await call(
            api, "POST", f"/v1/tenants/{tid}/keys", ok=(201,), json={"name": "k"}, headers=admin
        )
        tenants.append(Tenant(tid, name, k.json()["key"]))
    return tenants


async def upload_inputs(api: httpx.AsyncClient, tenants: list[Tenant]) -> None:
    arrays = input_arrays()
    for t in tenants:
        for name, data in arrays.items():
            await call(
                api, "PUT", f"/v1/datasets/{name}", ok=(200, 201), content=data, headers=t.headers
            )


async def submit(api: httpx.AsyncClient, spec: JobSpec) -> str:
    """Submit (again, with the same key, until it is stored); the job's id."""
    headers = {**spec.tenant.headers, "Idempotency-Key": spec.idempotency_key}
    r = await call(api, "POST", "/v1/jobs", ok=(200, 201), json=spec.body, headers=headers)
    return str(r.json()["id"])


async def submit_all(
    api: httpx.AsyncClient,
    specs: list[JobSpec],
    ids: dict[int, str],
    *,
    concurrency: int = 8,
    pace_s: float = 0.0,
) -> None:
    """Submit ``specs`` with ``concurrency`` clients, ``pace_s`` apart per client."""
    queue: asyncio.Queue[JobSpec] = asyncio.Queue()
    for spec in specs:
        queue.put_nowait(spec)

    async def client() -> None:
        while not queue.empty():
            spec = queue.get_nowait()
            ids[spec.index] = await submit(api, spec)
            if pace_s:
                await asyncio.sleep(pace_s)

    await asyncio.gather(*(client() for _ in range(concurrency)))


def blob(size: int, seed: int) -> bytes:
    """Deterministic bytes for the migrations."""
    block = random.Random(seed).randbytes(65_536)
    return (block * (size // 65_536 + 1))[:size]


def run_id() -> str:
    return uuid.uuid4().hex[:8]
