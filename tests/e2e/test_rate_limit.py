"""The rate limit is global: two gateway processes share one tenant's budget (Redis GCRA).

The count accepted is bounded by the time the requests really took: one budget lets through
one second's burst and the rate over that time, never more (two budgets would let through
twice as much), and, with four callers keeping it busy, not much less."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.e2e.conftest import BASE_PORT, another_gateway, new_tenant_key
from tools.cluster import LocalCluster

RATE = 40.0
SECONDS = 3.0


async def _hammer(client: httpx.AsyncClient, headers: dict[str, str], until: float) -> int:
    ok = 0
    while time.monotonic() < until:
        r = await client.get("/v1/kernels", headers=headers)
        ok += r.status_code == 200
        if r.status_code == 429:
            await asyncio.sleep(0.005)
    return ok


async def test_two_gateways_share_one_budget(cluster: LocalCluster, api: httpx.AsyncClient) -> None:
    h = await new_tenant_key(api, "rl", requests_per_second=RATE)
    async with another_gateway(cluster.cfg.env, BASE_PORT + 50) as api2:
        await asyncio.sleep(1.5)  # the budget refills after the setup requests
        start = time.monotonic()
        until = start + SECONDS
        counts = await asyncio.gather(
            _hammer(api, h, until),
            _hammer(api, h, until),
            _hammer(api2, h, until),
            _hammer(api2, h, until),
        )
        took = time.monotonic() - start
    accepted = sum(counts)
    in_flight = len(counts)  # a request each may straddle either end of the window
    most = RATE + RATE * took + in_flight  # the burst, then the rate
    # the burst's tokens are the slack for the callers' pauses: the rate over the window
    least = RATE * took - in_flight
    assert least <= accepted <= most, (accepted, took, counts)
    assert counts[2] + counts[3] > 0  # both gateways served some
    assert counts[0] + counts[1] > 0
