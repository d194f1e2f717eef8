"""Data flows between a workflow's steps through dataset names: a step may read a dataset that
an earlier step writes and that does not exist when the workflow is submitted; the receipt of
the step that wrote it names the bytes it wrote (their checksum), and the dataset names the
job that produced it."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import new_tenant, wait_for_state
from tests.e2e.test_kernels_api import download, upload

pytestmark = pytest.mark.e2e


async def test_a_step_reads_what_the_step_before_it_writes(api: httpx.AsyncClient) -> None:
    _, h = await new_tenant(api, "wf-data")
    x = np.arange(8, dtype=np.float64)
    await upload(api, h, "wf/x.npy", x)
    await upload(api, h, "wf/y.npy", np.ones(8))
    saxpy = {"kernel": "saxpy", "params": {"a": 2.0}}
    body: dict[str, Any] = {
        "name": "data-flow",
        "steps": {
            # writes wf/z.npy, which does not exist yet
            "first": {
                **saxpy,
                "inputs": {"x": "wf/x.npy", "y": "wf/y.npy"},
                "outputs": {"y": "wf/z.npy"},
            },
            # reads it
            "second": {
                **saxpy,
                "inputs": {"x": "wf/x.npy", "y": "wf/z.npy"},
                "outputs": {"y": "wf/w.npy"},
                "depends_on": [{"step": "first", "condition": "afterok"}],
            },
        },
    }
    r = await api.post("/v1/workflows", json=body, headers=h)
    assert r.status_code == 201, r.text
    steps = r.json()["steps"]
    second = await wait_for_state(
        api, steps["second"], h, {"SUCCEEDED", "FAILED", "CANCELLED"}, 120
    )
    assert second["state"] == "SUCCEEDED", second
    np.testing.assert_array_equal(await download(api, h, "wf/w.npy"), 4 * x + 1)
    first = (await api.get(f"/v1/jobs/{steps['first']}", headers=h)).json()
    meta = (await api.get("/v1/datasets/wf/z.npy", params={"meta": 1}, headers=h)).json()
    assert meta["produced_by"] == first["id"]
    assert first["receipt"]["outputs"]["y"] == {"dataset": "wf/z.npy", "checksum": meta["checksum"]}
    assert second["receipt"]["inputs"]["y"] == {"dataset": "wf/z.npy", "checksum": meta["checksum"]}


async def test_a_job_without_dependencies_still_needs_its_inputs(api: httpx.AsyncClient) -> None:
    _, h = await new_tenant(api, "wf-missing")
    body = {
        "kernel": "saxpy",
        "params": {"a": 1.0},
        "inputs": {"x": "nope/x.npy", "y": "nope/y.npy"},
        "outputs": {"y": "nope/z.npy"},
    }
    r = await api.post("/v1/jobs", json=body, headers=h)
    assert r.status_code == 422, r.text
    assert "not found" in r.json()["detail"]
