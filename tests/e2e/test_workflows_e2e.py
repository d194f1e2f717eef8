"""A workflow on the whole running suite: its cancel stops the step that is RUNNING on its
worker within 5 s (its attempt ends and is charged) and cancels the steps that wait, and the
workflow ends CANCELLED; ``aftercorr`` with an element that fails; a scheduler killed
(``kill -9``) while a fan-out is released and dispatched strands nothing and runs nothing
twice."""

from __future__ import annotations

import signal
import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import new_tenant
from tests.e2e.test_array_cancel import ENDLESS, until
from tools.cluster import LocalCluster

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


FAN = 30  # single-job steps after the first (and an array of ``FAN_ARRAY`` elements)
FAN_ARRAY = 100
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


async def test_a_scheduler_killed_while_a_fan_out_is_released_strands_nothing(
    api: httpx.AsyncClient, cluster: LocalCluster
) -> None:
    """first -> (FAN jobs and an array of FAN_ARRAY) -> join. The scheduler is killed
    (SIGKILL; supervisord starts it again) while ``first`` runs, so that ``first`` may end
    and release the fan-out while no scheduler listens (its wake-up lost), and again once the
    fan-out has started, in the middle of its dispatch. Every step still runs, once: each
    job one attempt, each element one, and ``join`` after the last of them."""
    _, h = await new_tenant(api, "wf-kill")
    mc = {"kernel": "montecarlo_pi", "params": {"samples": 1000, "seed": 1}}
    ok = "afterok"
    fan = {f"f{i:02d}": {**mc, "depends_on": [{"step": "first", "condition": ok}]}
           for i in range(FAN)}  # fmt: skip
    steps: dict[str, Any] = {
        "first": {**mc, "params": {"samples": 200_000_000, "seed": 1}},
        **fan,
        "array": {
            **mc,
            "array": {"size": FAN_ARRAY, "index_param": "seed"},
            "depends_on": [{"step": "first", "condition": ok}],
        },
        "join": {
            **mc,
            "depends_on": [{"step": n, "condition": ok} for n in [*fan, "array"]],
        },
    }
    r = await api.post("/v1/workflows", json={"name": "kill", "steps": steps}, headers=h)
    assert r.status_code == 201, r.text
    w = r.json()
    ids: dict[str, str] = w["steps"]
    await until(api, f"/v1/jobs/{ids['first']}", h, lambda j: j["state"] == "RUNNING")
    cluster.signal("scheduler", signal.SIGKILL)
    await until(api, f"/v1/workflows/{w['id']}", h,
                lambda x: x["counts"]["SUCCEEDED"] >= 2 or x["state"] in FINAL)  # fmt: skip
    cluster.signal("scheduler", signal.SIGKILL)
    done = await until(
        api, f"/v1/workflows/{w['id']}", h, lambda x: x["state"] in FINAL, timeout=240
    )
    assert done["state"] == "SUCCEEDED", done
    assert done["counts"]["SUCCEEDED"] == len(steps)
    ended = []
    for name, job_id in ids.items():
        if name == "array":
            continue
        attempts = (await api.get(f"/v1/jobs/{job_id}/attempts", headers=h)).json()["items"]
        assert len(attempts) == 1, (name, attempts)
        job = (await api.get(f"/v1/jobs/{job_id}", headers=h)).json()
        assert job["attempts"] == 1, (name, job)
        if name != "join":
            ended.append(datetime.fromisoformat(job["finished_at"]))
    elements = (
        await api.get(f"/v1/jobs/{ids['array']}/elements", params={"limit": FAN_ARRAY}, headers=h)
    ).json()["items"]
    assert len(elements) == FAN_ARRAY
    assert {(e["state"], e["attempts"]) for e in elements} == {("SUCCEEDED", 1)}
    ended += [datetime.fromisoformat(e["finished_at"]) for e in elements]
    join = (await api.get(f"/v1/jobs/{ids['join']}", headers=h)).json()
    assert datetime.fromisoformat(join["started_at"]) >= max(ended)
