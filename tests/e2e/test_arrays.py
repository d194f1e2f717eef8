"""Arrays on the whole running suite: an array runs to SUCCEEDED with each element's own
parameters and result, never more elements at once than ``max_concurrent``; two tenants'
arrays share the workers by weight.

Outcomes and orders only: how many elements overlapped is read from their recorded start
and finish (an element is materialised only after another one's finish committed, so the
order is causal), the shares from the order in which elements started."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ADMIN, new_tenant, wait_for_state

pytestmark = pytest.mark.e2e

SLOTS = 2 * 2  # the e2e cluster: two workers of concurrency 2


async def _elements(api: httpx.AsyncClient, array_id: str, h: dict[str, str]) -> list[Any]:
    """Every element of the array, in index order, page by page."""
    items: list[Any] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 50} | ({"cursor": cursor} if cursor else {})
        r = await api.get(f"/v1/jobs/{array_id}/elements", params=params, headers=h)
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def _most_at_once(elements: list[Any]) -> int:
    """The most elements running at one instant, from their recorded start and finish."""
    edges = sorted(
        (datetime.fromisoformat(e[key]), delta)
        for e in elements
        for key, delta in (("started_at", 1), ("finished_at", -1))
    )  # at a tie the finish (-1) sorts first: it came first
    running = most = 0
    for _, delta in edges:
        running += delta
        most = max(most, running)
    return most


async def test_an_array_runs_every_element_within_max_concurrent(
    api: httpx.AsyncClient,
) -> None:
    _, h = await new_tenant(api, "arr")
    body = {
        "kernel": "montecarlo_pi",
        "params": {"samples": 1000},
        "array": {"size": 20, "index_param": "seed", "max_concurrent": 2},
    }
    r = await api.post("/v1/jobs", json=body, headers=h)
    assert r.status_code == 201, r.text
    array = r.json()
    done = await wait_for_state(api, array["id"], h, {"SUCCEEDED", "FAILED", "CANCELLED"}, 120)
    assert done["state"] == "SUCCEEDED"
    assert done["array"]["counts"] == {
        "PENDING": 0,
        "QUEUED": 0,
        "RUNNING": 0,
        "SUCCEEDED": 20,
        "FAILED": 0,
        "CANCELLED": 0,
        "TIMED_OUT": 0,
    }
    elements = await _elements(api, array["id"], h)
    assert [e["id"] for e in elements] == [f"{array['id']}:{i}" for i in range(20)]
    for i, e in enumerate(elements):
        assert (e["state"], e["array_id"], e["array_index"]) == ("SUCCEEDED", array["id"], i)
        assert e["params"] == {"samples": 1000, "seed": i}
        assert e["result"]["samples"] == 1000
    assert len({e["result"]["estimate"] for e in elements}) > 1  # each its own seed
    assert _most_at_once(elements) <= 2
    usage = (await api.get("/v1/usage", headers=h)).json()
    assert usage["jobs"]["SUCCEEDED"] == 20  # elements, not the array


def share_slack(n: int, p: float, *, z: float = 4.0) -> float:
    """How far the heavier tenant's count among ``n`` starts may stray from ``p * n``: a
    binomial bound plus what may be on its way to the workers at either end."""
    return z * math.sqrt(n * p * (1 - p)) + 2 * SLOTS


async def test_two_tenants_arrays_share_the_workers_by_weight(api: httpx.AsyncClient) -> None:
    """The light tenant's array goes in first: first come, first served would start all of it
    before the heavy one's; by weight (1 and 3) the heavy tenant gets three starts in four
    while both wait."""
    size = 90
    tenants = []
    for name, weight in (("arr-w1", 1), ("arr-w3", 3)):
        tid, h = await new_tenant(api, name)
        r = await api.patch(f"/v1/tenants/{tid}", json={"weight": weight}, headers=ADMIN)
        assert r.status_code == 200, r.text
        tenants.append(h)
    await asyncio.sleep(0.3)  # weight changes reach the gateway's cache
    # Elements of ~0.1 s: a chunk is dealt a slot at a time, and each costs ~0.1 s between
    # one chunk's end and the next's start (flush, wake-up, pass, message, claim), so work of
    # only ~1 s in all would be decided by that gap rather than by the weights.
    body = {"kernel": "montecarlo_pi", "params": {"samples": 10_000_000}, "array": {"size": size}}
    ids = []
    for h in tenants:
        r = await api.post("/v1/jobs", json=body, headers=h)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    for array_id, h in zip(ids, tenants, strict=True):
        done = await wait_for_state(api, array_id, h, {"SUCCEEDED", "FAILED"}, 180)
        assert done["state"] == "SUCCEEDED"
    elements = [await _elements(api, array_id, h) for array_id, h in zip(ids, tenants, strict=True)]
    starts = sorted(
        (datetime.fromisoformat(e["started_at"]), heavy)
        for heavy, listed in enumerate(elements)
        for e in listed
    )
    # while both had elements to start: up to the first array's last start
    last = [max(t for t, w in starts if w == heavy) for heavy in (0, 1)]
    both = [w for t, w in starts if t <= min(last)]
    assert last[1] < last[0]  # the heavy array, submitted second, started all first
    n = len(both)
    assert abs(sum(both) - 0.75 * n) <= share_slack(n, 0.75), (sum(both), n)
