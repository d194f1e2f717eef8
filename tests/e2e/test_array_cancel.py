"""Cancel of an array on the whole running suite: its running elements are stopped on their
workers (their attempts end and are charged), the rest never run, and the array ends
CANCELLED with every element counted once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import new_tenant

pytestmark = pytest.mark.e2e

# Far more samples than a run could finish while the test waits: an attempt that ends was
# stopped.
ENDLESS = 10**12


async def until(
    api: httpx.AsyncClient, path: str, h: dict[str, str], done: Any, timeout: float = 120
) -> dict[str, Any]:
    """``path``'s answer once ``done(answer)`` holds."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await api.get(path, headers=h)
        assert r.status_code == 200, r.text
        body = r.json()
        if done(body):
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"{path} never reached the condition: {body}")


async def test_cancel_an_array_stops_its_running_elements(api: httpx.AsyncClient) -> None:
    _, h = await new_tenant(api, "arr-cancel")
    body = {
        "kernel": "montecarlo_pi",
        "params": {"samples": ENDLESS},
        "array": {"size": 5, "index_param": "seed", "max_concurrent": 2},
    }
    r = await api.post("/v1/jobs", json=body, headers=h)
    assert r.status_code == 201, r.text
    array_id = r.json()["id"]
    await until(api, f"/v1/jobs/{array_id}", h, lambda a: a["array"]["counts"]["RUNNING"] == 2)
    c = await api.post(f"/v1/jobs/{array_id}/cancel", headers=h)
    assert c.status_code == 202, c.text
    assert c.json()["state"] == "CANCELLED"
    assert c.json()["array"]["counts"]["CANCELLED"] == 5
    # The two running attempts end on their workers and are charged: they were stopped.
    await until(api, "/v1/usage", h, lambda u: u["cpu_seconds"] > 0)
    elements = (await api.get(f"/v1/jobs/{array_id}/elements", headers=h)).json()["items"]
    assert [e["state"] for e in elements] == ["CANCELLED"] * 5
    assert [e["attempts"] for e in elements] == [1, 1, 0, 0, 0]  # the rest never ran
    done = (await api.get(f"/v1/jobs/{array_id}", headers=h)).json()
    assert done["state"] == "CANCELLED"  # the workers' late reports move nothing final
    assert done["array"]["counts"]["CANCELLED"] == 5
    usage = (await api.get("/v1/usage", headers=h)).json()
    assert usage["jobs"]["CANCELLED"] == 5
    assert sum(usage["jobs"].values()) == 5
    assert (await api.post(f"/v1/jobs/{array_id}/cancel", headers=h)).status_code == 409
