"""A hostile tenant against a running cluster: every finding of the attack review replayed
end to end. Throughout the module a watcher polls ``/healthz`` and ``/readyz`` and a bystander
tenant keeps reading and writing its own data; neither may see anything but success."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from shared.settings import JobLimits
from tests.datamover.harness import MotoServer
from tests.e2e.conftest import (
    ADMIN,
    another_gateway,
    free_base_port,
    new_tenant,
    new_tenant_key,
    own_cluster,
    storage_env,
    wait_for_state,
)
from tools.cluster import (
    Autoscale,
    LocalCluster,
)

pytestmark = pytest.mark.e2e

FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
Array = np.ndarray[Any, Any]


def npy(arr: Array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


class Watcher:
    """Polls ``/healthz`` and ``/readyz`` on a thread and keeps every answer that was not 200."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.bad: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.wait(0.25):
                for path in ("/healthz", "/readyz"):
                    try:
                        status = client.get(path).status_code
                    except httpx.HTTPError as exc:
                        self.bad.append(f"{path}: {type(exc).__name__}")
                        continue
                    self.polls += 1
                    if status != 200:
                        self.bad.append(f"{path}: {status}")

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def cluster(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, e2e_moto: MotoServer
) -> Iterator[LocalCluster]:
    """A cluster as ``make up`` runs one: the scheduler's autoscaler owns the worker pools
    (cpu: 2 workers of 2 slots, held there; cuda: a maximum of 0, as by default)."""
    env = {
        **storage_env(Path(tmp_path_factory.mktemp("tiers")), e2e_moto),
        # bodies that trickle are cut off sooner than by default, so the test ends sooner
        "STRATUS_BODY_TIMEOUT_S": "5",
        "STRATUS_BODY_IDLE_TIMEOUT_S": "2",
    }
    with own_cluster(
        "abuse",
        test_env,
        tmp_path_factory,
        env=env,
        worker_env={"STRATUS_CONCURRENCY": "2"},
        autoscale=Autoscale(min_workers=2, max_workers=2),
    ) as c:
        yield c


@pytest.fixture(scope="module")
def watcher(cluster: LocalCluster) -> Iterator[Watcher]:
    with Watcher(cluster.url("gateway")) as w:
        yield w
    assert w.polls > 0
    assert w.bad == [], f"health answers other than 200 during the abuse: {w.bad[:20]}"


class Bystander:
    """Another tenant: each ``check`` writes, reads, lists and submits; all must succeed."""

    def __init__(self, api: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.api = api
        self.h = headers
        self.rounds = 0

    async def check(self) -> None:
        self.rounds += 1
        name = f"bystander/r{self.rounds}.npy"
        body = npy(np.arange(16, dtype=np.float64))
        r = await self.api.put(f"/v1/datasets/{name}", content=body, headers=self.h)
        assert r.status_code == 201, r.text
        r = await self.api.get(f"/v1/datasets/{name}", headers=self.h)
        assert r.status_code == 200, r.text
        assert r.content == body
        r = await self.api.get("/v1/datasets", headers=self.h, params={"prefix": "bystander/"})
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == min(self.rounds, 50)
        job = {"kernel": "montecarlo_pi", "params": {"samples": 1000, "seed": self.rounds}}
        r = await self.api.post("/v1/jobs", json=job, headers=self.h)
        assert r.status_code == 201, r.text
        r = await self.api.get("/v1/kernels", headers=self.h)
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
async def bystander(api: httpx.AsyncClient, watcher: Watcher) -> AsyncIterator[Bystander]:
    b = Bystander(api, await new_tenant_key(api, "bystander"))
    await b.check()
    yield b
    await b.check()


def problem_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, f"{r.status_code} {r.text[:500]}"
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["type"] != "about:blank"
    return body


# --- Critical -------------------------------------------------------------------------------


async def test_1_dataset_prefix_collisions_never_take_the_service_down(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    _, h = await new_tenant(api, "collide")
    blob = npy(np.zeros(4))
    for _ in range(4):  # more than the breaker's threshold
        assert (await api.put("/v1/datasets/x/a/b", content=blob, headers=h)).status_code == 201
        assert (await api.delete("/v1/datasets/x/a/b", headers=h)).status_code == 204
        # the folder x/a is gone with the dataset: the name is free again
        assert (await api.put("/v1/datasets/x/a", content=blob, headers=h)).status_code == 201
        problem_of(await api.put("/v1/datasets/x/a/b", content=blob, headers=h), 409)
        assert (await api.delete("/v1/datasets/x/a", headers=h)).status_code == 204
        await bystander.check()
    for i in range(4):  # racing a name and a name below it
        parent, child = f"p{i}/a", f"p{i}/a/b"
        answers = await asyncio.gather(
            *(api.put(f"/v1/datasets/{n}", content=blob, headers=h) for n in (parent, child))
        )
        codes = sorted(r.status_code for r in answers)
        assert codes == [201, 409], [r.text for r in answers]
        await bystander.check()


# --- High -----------------------------------------------------------------------------------


def _send_chunked(url: str, path: str, headers: dict[str, str], total: int) -> tuple[int, int]:
    """POST a chunked body of ``total`` bytes on a raw socket, stopping as soon as the server
    answers: (the status it answered, the bytes sent by then)."""
    host, port = url.removeprefix("http://").split(":")
    chunk = b"x" * 65536
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n{head}\r\n".encode()
        )
        sock.setblocking(False)
        answer = b""
        while sent < total:
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            if answer:
                break
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                time.sleep(0.01)
                continue
            sent += len(chunk)
        sock.settimeout(10)
        while b"\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    return int(answer.split(b" ", 2)[1]), sent


async def test_2_a_chunked_body_is_cut_at_the_limit_before_authentication(
    cluster: LocalCluster, bystander: Bystander
) -> None:
    total = 200 * 2**20
    for headers in ({}, {"Authorization": "Bearer sk_live_nobody"}):
        status, sent = await asyncio.to_thread(
            _send_chunked, cluster.url("gateway"), "/v1/jobs", headers, total
        )
        assert status == 413
        assert sent < total // 10, f"the gateway read {sent} bytes before answering"
    await bystander.check()


async def test_2_bodies_that_trickle_are_timed_out(
    cluster: LocalCluster, bystander: Bystander
) -> None:
    host, port = cluster.url("gateway").removeprefix("http://").split(":")
    socks = []
    for i in range(40):
        s = socket.create_connection((host, int(port)), timeout=60)
        auth = "" if i % 2 else "Authorization: Bearer sk_live_nobody\r\n"
        s.sendall(
            f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f'Content-Length: 1000\r\n{auth}\r\n{{"kernel"'.encode()
        )
        socks.append(s)
    await bystander.check()  # the trickling clients do not block anyone

    def closed_by_server(s: socket.socket) -> bool:
        try:
            data = s.recv(65536)  # an answer (408) and then EOF, or EOF, or a reset
            while data and not data.endswith(b"}") and b"\r\n\r\n" not in data:
                data += s.recv(65536)
            return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        finally:
            s.close()

    results = await asyncio.gather(*(asyncio.to_thread(closed_by_server, s) for s in socks))
    assert all(results), f"{results.count(False)} trickling bodies held open past 60 s"


async def test_3_an_output_that_cannot_fit_the_storage_quota_is_refused_at_submit(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    _, h = await new_tenant(api, "outquota", storage_bytes=1_000_000)
    a, b = np.ones((4000, 1)), np.ones((1, 4000))
    assert (await api.put("/v1/datasets/a.npy", content=npy(a), headers=h)).status_code == 201
    assert (await api.put("/v1/datasets/b.npy", content=npy(b), headers=h)).status_code == 201
    job = {"kernel": "matmul", "inputs": {"a": "a.npy", "b": "b.npy"}, "outputs": {"c": "c.npy"}}
    r = await api.post("/v1/jobs", json=job, headers=h)
    assert r.status_code in (413, 422), r.text
    assert str(4000 * 4000 * 8) in r.json()["detail"], r.text  # names the predicted size
    listed = (await api.get("/v1/datasets", headers=h)).json()["items"]
    assert sorted(d["name"] for d in listed) == ["a.npy", "b.npy"]
    await bystander.check()


async def test_4_concurrent_uploads_never_exceed_the_storage_quota(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    quota = 1_000_000
    _, h = await new_tenant(api, "racequota", storage_bytes=quota)
    blob = os.urandom(100_000)
    answers = await asyncio.gather(
        *(api.put(f"/v1/datasets/r/{i}", content=blob, headers=h) for i in range(30))
    )
    codes = [r.status_code for r in answers]
    assert set(codes) <= {201, 413}, codes
    assert 0 < codes.count(201) <= quota // len(blob)
    listed = (await api.get("/v1/datasets", headers=h, params={"limit": 100})).json()["items"]
    assert sum(d["size"] for d in listed) <= quota
    assert len(listed) == codes.count(201)
    await bystander.check()


async def test_5_a_footprint_over_the_job_memory_limit_is_refused_at_submit(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    _, h = await new_tenant(api, "bigmem")
    # the output alone is over the per-job memory limit (the same host's default)
    n = math.isqrt(JobLimits().job_memory_bytes() // 8) + 1000
    assert (
        await api.put("/v1/datasets/a.npy", content=npy(np.ones((n, 1))), headers=h)
    ).status_code == 201
    assert (
        await api.put("/v1/datasets/b.npy", content=npy(np.ones((1, n))), headers=h)
    ).status_code == 201
    job = {"kernel": "matmul", "inputs": {"a": "a.npy", "b": "b.npy"}, "outputs": {"c": "c.npy"}}
    body = problem_of(await api.post("/v1/jobs", json=job, headers=h), 422)
    assert "memory" in body["detail"]
    await bystander.check()


# --- Medium ---------------------------------------------------------------------------------


async def test_6_max_queued_jobs_is_exact_under_concurrent_submits(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    # max_running_jobs 0: nothing leaves the queue while the submissions race
    _, h = await new_tenant(api, "queued", max_queued_jobs=5, max_running_jobs=0)
    job = {"kernel": "montecarlo_pi", "params": {"samples": 1000}}
    answers = await asyncio.gather(*(api.post("/v1/jobs", json=job, headers=h) for _ in range(50)))
    codes = [r.status_code for r in answers]
    assert codes.count(201) == 5, codes
    assert codes.count(429) == 45, codes
    for r in answers:
        if r.status_code == 201:
            await api.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=h)
    await bystander.check()


async def test_7_a_tiny_rate_limit_does_not_outlive_the_quota_change(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    tid, h = await new_tenant(api, "lockout")
    r = await api.patch(
        f"/v1/tenants/{tid}", json={"quotas": {"requests_per_second": 1e-9}}, headers=ADMIN
    )
    assert r.status_code in (200, 422), r.text  # refusing such a rate outright is fine too
    await api.get("/v1/kernels", headers=h)
    await api.get("/v1/kernels", headers=h)
    rate = 5
    r = await api.patch(
        f"/v1/tenants/{tid}", json={"quotas": {"requests_per_second": rate}}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    # The old rate's debt is gone: at most one emission interval of the new rate (1/rate s)
    # to wait, which Retry-After (whole seconds) says, and the request after that wait passes.
    r = await api.get("/v1/kernels", headers=h)
    if r.status_code == 429:
        wait_s = int(r.headers["Retry-After"])
        assert wait_s <= math.ceil(1 / rate), wait_s
        await asyncio.sleep(wait_s)
        r = await api.get("/v1/kernels", headers=h)
    assert r.status_code == 200, "still limited after waiting what the new rate asks"
    await bystander.check()


async def test_8_results_stay_small_and_lists_stay_small(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    _, h = await new_tenant(api, "bigresult")
    data = npy(np.random.default_rng(0).random(1000))
    assert (await api.put("/v1/datasets/d.npy", content=data, headers=h)).status_code == 201
    huge = {
        "kernel": "histogram",
        "inputs": {"data": "d.npy"},
        "params": {"bins": 10**7, "range": [0, 1]},
    }
    problem_of(await api.post("/v1/jobs", json=huge, headers=h), 422)
    big = {**huge, "params": {"bins": 100_000, "range": [0, 1]}}  # about 300 KB of counts
    r = await api.post("/v1/jobs", json=big, headers=h)
    assert r.status_code == 201, r.text
    job = await wait_for_state(api, r.json()["id"], h, FINAL, timeout=120)
    assert job["state"] == "SUCCEEDED", job
    assert len(orjson.dumps(job["result"])) < 64 * 2**10
    stored = job["result"]["dataset"]
    counts = orjson.loads((await api.get(f"/v1/datasets/{stored}", headers=h)).content)["counts"]
    assert len(counts) == 100_000
    assert sum(counts) == 1000
    r = await api.get("/v1/jobs", headers=h, params={"limit": 6})
    assert len(r.content) < 64 * 2**10
    await bystander.check()


async def test_9_one_tenants_long_jobs_leave_a_slot_for_another_tenant(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    _, hog = await new_tenant(api, "hog")
    _, small = await new_tenant(api, "small")
    long_job = {"kernel": "montecarlo_pi", "params": {"samples": 3 * 10**9}, "timeout_s": 120}
    hogs = [
        (await api.post("/v1/jobs", json=long_job, headers=hog)).json()["id"] for _ in range(10)
    ]
    await wait_for_state(api, hogs[0], hog, {"RUNNING"} | FINAL)
    r = await api.post(
        "/v1/jobs", json={"kernel": "montecarlo_pi", "params": {"samples": 1000}}, headers=small
    )
    tiny = await wait_for_state(api, r.json()["id"], small, FINAL, timeout=120)
    assert tiny["state"] == "SUCCEEDED"
    finished = []
    for job_id in hogs:
        job = (await api.get(f"/v1/jobs/{job_id}", headers=hog)).json()
        finished.append(job["finished_at"])
        await api.post(f"/v1/jobs/{job_id}/cancel", headers=hog)
    # the tiny job did not wait for a hog to finish first
    assert all(f is None or tiny["started_at"] < f for f in finished), (tiny, finished)


async def test_9_jobs_in_flight_count_against_the_cpu_budget(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    _, h = await new_tenant(api, "cpubudget", cpu_seconds_per_day=1)
    # each job needs more CPU than the whole budget
    job = {"kernel": "montecarlo_pi", "params": {"samples": 10**9}, "timeout_s": 60}
    ids = [(await api.post("/v1/jobs", json=job, headers=h)).json()["id"] for _ in range(6)]
    deadline = time.monotonic() + 60
    while True:  # until one has ended and the others are held by the budget, saying so
        jobs = [(await api.get(f"/v1/jobs/{i}", headers=h)).json() for i in ids]
        ended = [j for j in jobs if j["state"] in FINAL]
        held = [j for j in jobs if "cpu_seconds_per_day" in (j.get("state_reason") or "")]
        if ended and len(held) == len(ids) - 1:
            break
        assert time.monotonic() < deadline, jobs
        await asyncio.sleep(0.3)
    # the first job held the whole budget while it ran: no other one ever started
    assert [j["started_at"] is not None for j in jobs].count(True) == 1, jobs
    for i in ids:
        await api.post(f"/v1/jobs/{i}/cancel", headers=h)
    await bystander.check()


# --- Low ------------------------------------------------------------------------------------


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


async def test_10_odd_text_is_a_422_never_a_500(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    _, h = await new_tenant(api, "oddtext")
    base = '{"kernel":"montecarlo_pi","params":{"samples":10},'
    bodies = [
        '{"kernel":"saxpy","params":{"a":1},"inputs":{"x":"x","y":"y"},"outputs":{"y":"a\\u0000b"}}',
        '{"kernel":"saxpy","params":{"a":1},"inputs":{"x":"x","y":"y"},"outputs":{"y":"\\ud800"}}',
        '{"kernel":"saxpy","params":{"a":1},"inputs":{"\\ud800":"x","y":"y"},"outputs":{"y":"y"}}',
        base + '"outputs":{"\\ud800":"y"}}',
        base + '"labels":{"\\ud800":"x"}}',
    ]
    for body in bodies:
        r = await api.post(
            "/v1/jobs", content=body, headers={**h, "Content-Type": "application/json"}
        )
        problem_of(r, 422)
    for path, params in [
        ("/v1/datasets", {"prefix": "\x00"}),
        ("/v1/migrations", {"dataset": "\x00"}),
        ("/v1/jobs", {"cursor": _cursor(["2026-01-01", 1])}),
        ("/v1/jobs", {"cursor": _cursor(["9999-12-31T23:59:59-23:59", str(uuid.uuid4())])}),
        ("/v1/jobs", {"cursor": _cursor(["-99999-01-01", "x"])}),
        ("/v1/jobs", {"cursor": "%%%"}),
        ("/v1/datasets", {"cursor": _cursor([1, 2, 3])}),
        ("/v1/jobs", {"limit": str(10**30)}),
    ]:
        problem_of(await api.get(path, params=params, headers=h), 422)
    await bystander.check()


async def test_11_output_names_follow_the_upload_rule_at_submit(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    other, _ = await new_tenant(api, "victim")
    _, h = await new_tenant(api, "names")
    grid = npy(np.zeros((8, 8)))
    assert (await api.put("/v1/datasets/g.npy", content=grid, headers=h)).status_code == 201
    for name in (f"../{other}/x", "/abs", "", "a//b", "a/../b"):
        job = {
            "kernel": "stencil2d",
            "params": {"iterations": 1},
            "inputs": {"grid": "g.npy"},
            "outputs": {"grid": name},
        }
        problem_of(await api.post("/v1/jobs", json=job, headers=h), 422)
    await bystander.check()


async def test_12_an_idempotency_key_is_tied_to_its_body(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    _, h = await new_tenant(api, "idem")
    job = {"kernel": "montecarlo_pi", "params": {"samples": 10}}
    first = await api.post("/v1/jobs", json=job, headers={**h, "Idempotency-Key": "k1"})
    assert first.status_code == 201
    again = await api.post("/v1/jobs", json=job, headers={**h, "Idempotency-Key": "k1"})
    assert again.json()["id"] == first.json()["id"]
    other = {**job, "params": {"samples": 11}}
    r = await api.post("/v1/jobs", json=other, headers={**h, "Idempotency-Key": "k1"})
    assert problem_of(r, 422)["type"].endswith("/idempotency-key-reused")
    problem_of(await api.post("/v1/jobs", json=job, headers={**h, "Idempotency-Key": ""}), 422)
    listed = (await api.get("/v1/jobs", headers=h)).json()["items"]
    assert [j["id"] for j in listed] == [first.json()["id"]]
    assert listed[0]["params"]["samples"] == 10
    await bystander.check()


async def test_13_usage_needs_a_scope_copies_count_and_types_are_strict(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    tid, h = await new_tenant(api, "strict")
    k = await api.post(
        f"/v1/tenants/{tid}/keys", json={"name": "data", "scopes": ["data:read"]}, headers=ADMIN
    )
    data_only = {"Authorization": f"Bearer {k.json()['key']}"}
    problem_of(await api.get("/v1/usage", headers=data_only), 403)
    blob = os.urandom(50_000)
    assert (await api.put("/v1/datasets/c.bin", content=blob, headers=h)).status_code == 201
    before = (await api.get("/v1/usage", headers=h)).json()["storage_bytes"]
    r = await api.post(
        "/v1/migrations", json={"dataset": "c.bin", "to_tier": "archive", "mode": "copy"}, headers=h
    )
    assert r.status_code == 202, r.text
    done = r.json()
    deadline = time.monotonic() + 60
    while done["state"] not in ("SUCCEEDED", "FAILED"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
        done = (await api.get(f"/v1/migrations/{done['id']}", headers=h)).json()
    assert done["state"] == "SUCCEEDED", done
    after = (await api.get("/v1/usage", headers=h)).json()["storage_bytes"]
    assert after == before + len(blob)
    for params in ({"samples": True}, {"samples": "10"}, {"samples": 10.5}):
        job = {"kernel": "montecarlo_pi", "params": params}
        problem_of(await api.post("/v1/jobs", json=job, headers=h), 422)
    problem_of(
        await api.post(
            "/v1/jobs",
            json={"kernel": "montecarlo_pi", "params": {"samples": 1}, "priority": True},
            headers=h,
        ),
        422,
    )
    await bystander.check()


# --- Found by a new user --------------------------------------------------------------------


async def test_14_list_filters_work_and_unknown_ones_are_refused(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    _, h = await new_tenant(api, "filters")
    for i, color in enumerate(["red", "blue", "red"]):
        job = {"kernel": "montecarlo_pi", "params": {"samples": 10 + i}, "labels": {"color": color}}
        assert (await api.post("/v1/jobs", json=job, headers=h)).status_code == 201
    red = (await api.get("/v1/jobs", params={"label": "color:red"}, headers=h)).json()["items"]
    assert len(red) == 2
    assert {j["labels"]["color"] for j in red} == {"red"}
    by_kernel = await api.get("/v1/jobs", params={"kernel": "saxpy"}, headers=h)
    assert by_kernel.status_code == 200
    assert by_kernel.json()["items"] == []
    for path in ("/v1/jobs", "/v1/datasets", "/v1/migrations"):
        problem_of(await api.get(path, params={"colour": "red"}, headers=h), 422)
    await bystander.check()


async def test_15_a_tier_that_is_not_configured_is_not_offered(
    cluster: LocalCluster, api: httpx.AsyncClient, bystander: Bystander
) -> None:
    """A second gateway on the same cluster, started without the ``s3`` tier's settings."""
    _, h = await new_tenant(api, "tiers")
    tiers = (await api.get("/v1/tiers", headers=h)).json()
    assert "s3" in {t["name"] for t in tiers["items"]}
    env = cluster.cfg.env
    async with another_gateway(env, free_base_port(), without="STRATUS_STORAGE__S3__") as no_s3:
        names = {t["name"] for t in (await no_s3.get("/v1/tiers", headers=h)).json()["items"]}
        assert "s3" not in names
        assert {"local", "archive"} <= names
        job = {"kernel": "montecarlo_pi", "params": {"samples": 10}, "output_tier": "s3"}
        problem_of(await no_s3.post("/v1/jobs", json=job, headers=h), 422)
        r = await no_s3.put("/v1/datasets/t.bin", content=b"abc", params={"tier": "s3"}, headers=h)
        problem_of(r, 422)
        r = await no_s3.put("/v1/datasets/t.bin", content=b"abc", headers=h)
        assert r.status_code == 201, r.text
        r = await no_s3.post(
            "/v1/migrations", json={"dataset": "t.bin", "to_tier": "s3", "mode": "copy"}, headers=h
        )
        problem_of(r, 422)
    await bystander.check()


async def test_16_a_device_no_pool_can_run_is_refused(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    _, h = await new_tenant(api, "cuda")
    job = {"kernel": "montecarlo_pi", "params": {"samples": 10}, "device": "cuda"}
    body = problem_of(await api.post("/v1/jobs", json=job, headers=h), 422)
    assert "cuda" in body["detail"]
    await bystander.check()


async def test_17_inputs_are_checked_from_their_headers_at_submit(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    _, h = await new_tenant(api, "shapes")
    for name, arr in {
        "a.npy": np.ones((3, 4)),
        "b.npy": np.ones((5, 2)),
        "x.npy": np.ones(4),
        "y.npy": np.ones(5),
        "i.npy": np.array(["a", "b"]),
    }.items():
        assert (
            await api.put(f"/v1/datasets/{name}", content=npy(arr), headers=h)
        ).status_code == 201
    assert (
        await api.put("/v1/datasets/t.txt", content=b"not an array", headers=h)
    ).status_code == 201
    cases = [
        (
            {"kernel": "matmul", "inputs": {"a": "a.npy", "b": "b.npy"}, "outputs": {"c": "c.npy"}},
            "ab",
        ),
        (
            {
                "kernel": "saxpy",
                "params": {"a": 1},
                "inputs": {"x": "x.npy", "y": "y.npy"},
                "outputs": {"y": "o.npy"},
            },
            "xy",
        ),
        (
            {
                "kernel": "stencil2d",
                "params": {"iterations": 1},
                "inputs": {"grid": "x.npy"},
                "outputs": {"grid": "o.npy"},
            },
            ["grid"],
        ),
        (
            {
                "kernel": "histogram",
                "params": {"bins": 4, "range": [0, 1]},
                "inputs": {"data": "t.txt"},
            },
            ["data"],
        ),
        (
            {
                "kernel": "histogram",
                "params": {"bins": 4, "range": [0, 1]},
                "inputs": {"data": "i.npy"},
            },
            ["data"],
        ),
    ]
    for job, culprits in cases:
        body = problem_of(await api.post("/v1/jobs", json=job, headers=h), 422)
        named = {e["loc"][2] for e in body.get("errors", []) if e["loc"][:2] == ["body", "inputs"]}
        assert named, body
        assert named <= set(culprits), body
        assert "pickle" not in orjson.dumps(body).decode()
    await bystander.check()


async def test_19_a_cancelled_running_attempt_is_in_usage(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    _, h = await new_tenant(api, "usage")
    job = {"kernel": "montecarlo_pi", "params": {"samples": 3 * 10**9}, "labels": {"run": "u"}}
    r = await api.post("/v1/jobs", json=job, headers=h)
    job_id = r.json()["id"]
    await wait_for_state(api, job_id, h, {"RUNNING"})
    await asyncio.sleep(1.5)
    await api.post(f"/v1/jobs/{job_id}/cancel", headers=h)
    await wait_for_state(api, job_id, h, {"CANCELLED"})
    deadline = time.monotonic() + 20
    while True:  # the tenant's only job: any CPU time charged is the cancelled attempt's
        usage = (await api.get("/v1/usage", headers=h)).json()
        if usage["cpu_seconds"] > 0:
            break
        assert time.monotonic() < deadline, usage
        await asyncio.sleep(0.5)
    grouped = (await api.get("/v1/usage", params={"group_by": "label"}, headers=h)).json()
    assert grouped["groups"], grouped
    assert abs(sum(g["cpu_seconds"] for g in grouped["groups"]) - usage["cpu_seconds"]) < 1e-6
    await bystander.check()


async def test_20_the_caller_sees_its_quotas_and_the_api_describes_itself(
    api: httpx.AsyncClient, bystander: Bystander
) -> None:
    tid, h = await new_tenant(api, "self", max_queued_jobs=7)
    me = (await api.get("/v1/tenant", headers=h)).json()
    assert me["id"] == tid
    assert me["quotas"]["max_queued_jobs"] == 7
    listed = (await api.get("/v1/tenants", params={"limit": 2}, headers=ADMIN)).json()
    assert set(listed) == {"items", "next_cursor"}
    assert len(listed["items"]) == 2
    docs = await api.get("/docs")
    assert docs.status_code == 200
    assert "cdn.jsdelivr.net" not in docs.text
    root = (await api.get("/")).json()
    assert "/docs" in orjson.dumps(root).decode()
    problem_of(await api.get(f"/v1/jobs/{uuid.uuid4()}", headers=h), 404)
    await bystander.check()
