"""A workflow on the whole running suite: its cancel stops the step that is RUNNING on its
worker within 5 s (its attempt ends and is charged) and cancels the steps that wait, and the
workflow ends CANCELLED."""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import pytest

from tests.e2e.conftest import new_tenant
from tests.e2e.test_array_cancel import ENDLESS, until

pytestmark = pytest.mark.e2e

STOP_WITHIN_S = 5.0  # what the contract gives a cancel to stop a running step


async def test_cancelling_a_workflow_stops_its_running_step_and_cancels_the_rest(
    api: httpx.AsyncClient,
) -> None:
    _, h = await new_tenant(api, "wf-cancel")
    endless = {"kernel": "montecarlo_pi", "params": {"samples": ENDLESS, "seed": 1}}
    body = {
        "name": "endless",
        "steps": {
            "long": endless,
            "next": {**endless, "depends_on": [{"step": "long", "condition": "afterok"}]},
            "last": {**endless, "depends_on": [{"step": "next", "condition": "afterany"}]},
        },
    }
    r = await api.post("/v1/workflows", json=body, headers=h)
    assert r.status_code == 201, r.text
    w = r.json()
    long_id = w["steps"]["long"]
    await until(api, f"/v1/jobs/{long_id}", h, lambda j: j["state"] == "RUNNING")
    asked = time.time()
    c = await api.post(f"/v1/workflows/{w['id']}/cancel", headers=h)
    assert c.status_code == 202, c.text
    for step in ("long", "next", "last"):
        job = (await api.get(f"/v1/jobs/{w['steps'][step]}", headers=h)).json()
        assert job["state"] == "CANCELLED", (step, job)
    # the running attempt ends on its worker: stopped, not left to its timeout
    attempts = await until(
        api,
        f"/v1/jobs/{long_id}/attempts",
        h,
        lambda a: bool(a["items"]) and a["items"][-1]["finished_at"] is not None,
        timeout=60,
    )
    ended = datetime.fromisoformat(attempts["items"][-1]["finished_at"]).timestamp()
    assert ended - asked <= STOP_WITHIN_S, attempts
    for step in ("next", "last"):  # the waiting steps never ran
        job = (await api.get(f"/v1/jobs/{w['steps'][step]}", headers=h)).json()
        assert job["attempts"] == 0
    done = (await api.get(f"/v1/workflows/{w['id']}", headers=h)).json()
    assert done["state"] == "CANCELLED"
    assert done["counts"]["CANCELLED"] == 3
    assert (await api.post(f"/v1/workflows/{w['id']}/cancel", headers=h)).status_code == 409


async def test_aftercorr_runs_the_elements_whose_counterpart_succeeded(
    api: httpx.AsyncClient,
) -> None:
    """B aftercorr A, where A's element 1 does not succeed (it runs past its timeout): B's
    element 1 is cancelled ``dependency_never_satisfied``, the others run and succeed."""
    _, h = await new_tenant(api, "wf-aftercorr")
    a = {
        "kernel": "montecarlo_pi",
        "params": {"samples": 1000},
        "timeout_s": 2,
        "max_retries": 0,
        "array": {"size": 3, "index_param": "seed", "overrides": [{}, {"samples": ENDLESS}]},
    }
    r = await api.post("/v1/jobs", json=a, headers=h)
    assert r.status_code == 201, r.text
    a_id = r.json()["id"]
    b = {
        "kernel": "montecarlo_pi",
        "params": {"samples": 1000},
        "array": {"size": 3, "index_param": "seed"},
        "depends_on": [{"job": a_id, "condition": "aftercorr"}],
    }
    r = await api.post("/v1/jobs", json=b, headers=h)
    assert r.status_code == 201, r.text
    b_id = r.json()["id"]
    final = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
    await until(api, f"/v1/jobs/{b_id}", h, lambda j: j["state"] in final, timeout=120)
    a_elements = (await api.get(f"/v1/jobs/{a_id}/elements", headers=h)).json()["items"]
    assert [e["state"] for e in a_elements] == ["SUCCEEDED", "TIMED_OUT", "SUCCEEDED"]
    b_elements = (await api.get(f"/v1/jobs/{b_id}/elements", headers=h)).json()["items"]
    assert [e["state"] for e in b_elements] == ["SUCCEEDED", "CANCELLED", "SUCCEEDED"]
    assert b_elements[1]["state_reason"] == "dependency_never_satisfied"
    assert b_elements[1]["attempts"] == 0
