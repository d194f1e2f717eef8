"""End to end through the API: upload ``.npy`` inputs, run kernels, download the outputs and
compare them with the contract's NumPy expressions (``tests/worker/reference.py``)."""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import numpy as np
import pytest

from shared.storage.checksum import format_checksum, new_hasher
from tests.e2e.conftest import ADMIN, new_tenant, new_tenant_key, wait_for_state
from tests.worker import reference as ref

pytestmark = pytest.mark.e2e

Array = np.ndarray[Any, Any]


def npy(arr: Array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


async def upload(
    api: httpx.AsyncClient, h: dict[str, str], name: str, arr: Array, **params: str
) -> dict[str, Any]:
    r = await api.put(f"/v1/datasets/{name}", content=npy(arr), headers=h, params=params)
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


async def download(api: httpx.AsyncClient, h: dict[str, str], name: str) -> Array:
    r = await api.get(f"/v1/datasets/{name}", headers=h)
    assert r.status_code == 200, r.text
    arr: Array = np.load(io.BytesIO(r.content), allow_pickle=False)
    return arr


async def run(api: httpx.AsyncClient, h: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    r = await api.post("/v1/jobs", json=body, headers=h)
    assert r.status_code == 201, r.text
    return await wait_for_state(
        api, r.json()["id"], h, {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"}
    )


def assert_close(got: Array, want: Array) -> None:
    assert got.shape == want.shape
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=ref.RTOL, atol=0)


async def test_stencil2d_matmul_and_nbody_round_trip_through_the_api(
    api: httpx.AsyncClient,
) -> None:
    h = await new_tenant_key(api, "kernels")
    rng = np.random.default_rng(7)
    grid = rng.uniform(0.0, 100.0, (33, 47))
    a, b = rng.standard_normal((17, 29)), rng.standard_normal((29, 13))
    bodies = ref.bodies(rng, 24)
    await upload(api, h, "in/plate.npy", grid)
    await upload(api, h, "in/a.npy", a)
    await upload(api, h, "in/b.npy", b)
    await upload(api, h, "in/bodies.npy", bodies)

    stencil = await run(
        api,
        h,
        {
            "kernel": "stencil2d",
            "params": {"iterations": 25},
            "inputs": {"grid": "in/plate.npy"},
            "outputs": {"grid": "out/plate-25.npy"},
        },
    )
    assert stencil["state"] == "SUCCEEDED", stencil
    assert_close(await download(api, h, "out/plate-25.npy"), ref.stencil2d(grid, 25))

    mm = await run(
        api,
        h,
        {
            "kernel": "matmul",
            "inputs": {"a": "in/a.npy", "b": "in/b.npy"},
            "outputs": {"c": "out/c.npy"},
        },
    )
    assert mm["state"] == "SUCCEEDED", mm
    assert_close(await download(api, h, "out/c.npy"), a @ b)

    steps, dt, softening = 20, 0.001, 0.05
    nb = await run(
        api,
        h,
        {
            "kernel": "nbody",
            "params": {"steps": steps, "dt": dt, "softening": softening},
            "inputs": {"bodies": "in/bodies.npy"},
            "outputs": {"bodies": "out/bodies.npy"},
        },
    )
    assert nb["state"] == "SUCCEEDED", nb
    want, e0, e1 = ref.nbody(bodies, steps, dt, softening)
    assert_close(await download(api, h, "out/bodies.npy"), want)
    assert nb["result"]["energy_initial"] == pytest.approx(e0, rel=ref.RTOL)
    assert nb["result"]["energy_final"] == pytest.approx(e1, rel=ref.RTOL)

    # outputs are the tenant's datasets on the local tier, with their metadata
    meta = await api.get("/v1/datasets/out/c.npy", params={"meta": 1}, headers=h)
    assert meta.status_code == 200, meta.text
    assert meta.json()["tier"] == "local"
    assert meta.json()["size"] == len(npy(a @ b))
    listed = await api.get("/v1/datasets", headers=h, params={"limit": 500})
    names = {d["name"] for d in listed.json()["items"]}
    assert {"out/plate-25.npy", "out/c.npy", "out/bodies.npy"} <= names


async def test_an_output_overwrites_the_previous_version(api: httpx.AsyncClient) -> None:
    h = await new_tenant_key(api, "overwrite")
    grid = np.random.default_rng(3).uniform(0.0, 1.0, (9, 9))
    await upload(api, h, "g.npy", grid)
    for iterations in (1, 2):  # in place: the output names the input dataset
        job = await run(
            api,
            h,
            {
                "kernel": "stencil2d",
                "params": {"iterations": 1},
                "inputs": {"grid": "g.npy"},
                "outputs": {"grid": "g.npy"},
            },
        )
        assert job["state"] == "SUCCEEDED", job
        assert_close(await download(api, h, "g.npy"), ref.stencil2d(grid, iterations))


async def test_histogram_result_counts(api: httpx.AsyncClient) -> None:
    h = await new_tenant_key(api, "hist")
    data = ref.awkward_histogram_data(np.random.default_rng(11), 16, -2.0, 3.0)
    await upload(api, h, "data.npy", data)
    job = await run(
        api,
        h,
        {
            "kernel": "histogram",
            "params": {"bins": 16, "range": [-2.0, 3.0]},
            "inputs": {"data": "data.npy"},
        },
    )
    assert job["state"] == "SUCCEEDED", job
    assert job["result"]["counts"] == ref.histogram(data, 16, -2.0, 3.0)


async def test_a_missing_input_is_refused_at_submit(api: httpx.AsyncClient) -> None:
    h = await new_tenant_key(api, "missing")
    body = {
        "kernel": "matmul",
        "inputs": {"a": "nope/a.npy", "b": "nope/b.npy"},
        "outputs": {"c": "c.npy"},
    }
    r = await api.post("/v1/jobs", json=body, headers=h)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["status"] == 422
    assert any(e["loc"][-2:] == ["inputs", "a"] for e in problem["errors"]), problem


async def test_a_bad_shape_is_refused_at_submit_or_fails_the_job_with_a_clear_error(
    api: httpx.AsyncClient,
) -> None:
    # nothing of this tenant runs until its max_running_jobs is raised
    tid, h = await new_tenant(api, "shape", max_running_jobs=0)
    await upload(api, h, "a.npy", np.ones((3, 4)))
    await upload(api, h, "b.npy", np.ones((5, 2)))
    await upload(api, h, "v.npy", np.ones(6))
    matmul = {"kernel": "matmul", "inputs": {"a": "a.npy", "b": "b.npy"}, "outputs": {"c": "c.npy"}}
    r = await api.post("/v1/jobs", json=matmul, headers=h)
    assert r.status_code == 422, r.text
    assert "3\N{MULTIPLICATION SIGN}4" in r.json()["detail"]
    stencil = {
        "kernel": "stencil2d",
        "params": {"iterations": 1},
        "inputs": {"grid": "v.npy"},
        "outputs": {"grid": "g.npy"},
    }
    r = await api.post("/v1/jobs", json=stencil, headers=h)
    assert r.status_code == 422, r.text
    assert "2-D" in r.json()["errors"][0]["msg"], r.text
    # inputs replaced after the submission are checked again where the job runs
    await upload(api, h, "b.npy", np.ones((4, 2)))
    accepted = await api.post("/v1/jobs", json=matmul, headers=h)
    assert accepted.status_code == 201, accepted.text
    await upload(api, h, "b.npy", np.ones((5, 2)))
    r = await api.patch(
        f"/v1/tenants/{tid}", json={"quotas": {"max_running_jobs": 4}}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    mismatch = await wait_for_state(
        api, accepted.json()["id"], h, {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED"}
    )
    assert mismatch["state"] == "FAILED", mismatch
    assert mismatch["attempts"] == 1  # the job's fault: not retried
    assert "inner dimensions differ" in mismatch["error"], mismatch["error"]
    assert "3x4" in mismatch["error"], mismatch["error"]
    assert "Traceback" not in mismatch["error"]
    # a failed job publishes nothing
    assert (await api.get("/v1/datasets/c.npy", headers=h)).status_code == 404


async def test_an_input_on_s3_is_staged_in_and_the_output_is_downloadable(
    api: httpx.AsyncClient,
) -> None:
    h = await new_tenant_key(api, "s3")
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal(1000), rng.standard_normal(1000)
    on_s3 = await upload(api, h, "remote/x.npy", x, tier="s3")
    assert on_s3["tier"] == "s3"
    await upload(api, h, "y.npy", y)
    t0 = time.monotonic()
    job = await run(
        api,
        h,
        {
            "kernel": "saxpy",
            "params": {"a": 3.0},
            "inputs": {"x": "remote/x.npy", "y": "y.npy"},
            "outputs": {"y": "out/y.npy"},
        },
    )
    assert job["state"] == "SUCCEEDED", (job, time.monotonic() - t0)
    assert_close(await download(api, h, "out/y.npy"), ref.saxpy(3.0, x, y))
    staged = await api.get("/v1/datasets/remote/x.npy", params={"meta": 1}, headers=h)
    assert staged.status_code == 200, staged.text
    assert staged.json()["checksum"] == on_s3["checksum"]


@pytest.mark.parametrize("tier", ["archive", "s3"])
async def test_outputs_land_on_the_tier_the_job_names(api: httpx.AsyncClient, tier: str) -> None:
    """The worker stages the output out to ``output_tier`` before the job is SUCCEEDED: the
    dataset is on that tier only, and its bytes download with the recorded checksum."""
    h = await new_tenant_key(api, f"out-{tier}")
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal(2000), rng.standard_normal(2000)
    await upload(api, h, "x.npy", x)
    await upload(api, h, "y.npy", y)
    name = f"results/{tier}/y.npy"
    job = await run(
        api,
        h,
        {
            "kernel": "saxpy",
            "params": {"a": -1.5},
            "inputs": {"x": "x.npy", "y": "y.npy"},
            "outputs": {"y": name},
            "output_tier": tier,
        },
    )
    assert job["state"] == "SUCCEEDED", job
    assert job["output_tier"] == tier
    meta = await api.get(f"/v1/datasets/{name}", params={"meta": 1}, headers=h)
    assert meta.status_code == 200, meta.text
    assert meta.json()["tier"] == tier
    content = await api.get(f"/v1/datasets/{name}", headers=h)
    assert content.status_code == 200, content.text
    hasher = new_hasher()
    hasher.update(content.content)
    assert format_checksum(hasher) == meta.json()["checksum"]
    assert content.headers["etag"].strip('"') == meta.json()["checksum"]
    assert meta.json()["size"] == len(content.content)
    assert_close(np.load(io.BytesIO(content.content)), ref.saxpy(-1.5, x, y))


async def test_an_unknown_output_tier_is_refused_and_nothing_stored(
    api: httpx.AsyncClient,
) -> None:
    h = await new_tenant_key(api, "out-unknown")
    body = {"kernel": "montecarlo_pi", "params": {"samples": 10}, "output_tier": "tape"}
    r = await api.post("/v1/jobs", json=body, headers=h)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert any(e["loc"] == ["body", "output_tier"] for e in r.json()["errors"])
    listed = await api.get("/v1/jobs", headers=h)
    assert listed.json()["items"] == []
