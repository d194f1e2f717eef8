"""Property-based requests against the gateway's own OpenAPI document (schemathesis):
whatever the generated input, no 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.e2e.conftest import ADMIN
from tools.cluster import LocalCluster


@pytest.fixture(scope="module")
def tenant_headers(cluster: LocalCluster) -> Iterator[dict[str, str]]:
    base = cluster.url("gateway")
    t = httpx.post(
        f"{base}/v1/tenants",
        json={"name": "schemathesis", "quotas": {"requests_per_second": 100_000}},
        headers=ADMIN,
        timeout=10,
    )
    assert t.status_code in (201, 409), t.text
    if t.status_code == 409:
        tid = next(
            x["id"]
            for x in httpx.get(f"{base}/v1/tenants", headers=ADMIN).json()
            if x["name"] == "schemathesis"
        )
    else:
        tid = t.json()["id"]
    k = httpx.post(f"{base}/v1/tenants/{tid}/keys", json={"name": "fuzz"}, headers=ADMIN)
    headers = {"Authorization": f"Bearer {k.json()['key']}"}
    yield headers
    # Generated jobs may be huge (valid params up to 10^12 samples): stop them all so the
    # shared cluster is idle for the tests after this module.
    for state in ("PENDING", "QUEUED", "RUNNING"):
        listed = httpx.get(
            f"{base}/v1/jobs", params={"state": state, "limit": 500}, headers=headers, timeout=10
        ).json()["items"]
        for job in listed:
            httpx.post(f"{base}/v1/jobs/{job['id']}/cancel", headers=headers, timeout=10)


@pytest.fixture(scope="session")
def api_schema(cluster: LocalCluster) -> Any:
    return schemathesis.openapi.from_url(f"{cluster.url('gateway')}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any, tenant_headers: dict[str, str]) -> None:
    headers = (
        ADMIN if case.path.startswith(("/v1/tenants", "/v1/admin", "/v1/audit")) else tenant_headers
    )
    case.call_and_validate(headers=headers, checks=[not_a_server_error], timeout=30)
