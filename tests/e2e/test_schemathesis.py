"""Property-based requests against the gateway's own OpenAPI document (schemathesis): whatever
the generated input, no 5xx, and every answer is one the document declares: its status code,
its content type and a body that matches the declared schema (``Problem`` for errors); and the
bearer auth the document declares is enforced on every operation that answered 2xx."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.datamover.harness import MotoServer, free_port
from tests.e2e.conftest import ADMIN, storage_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gateway(
    test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, e2e_moto: MotoServer
) -> Iterator[str]:
    """The gateway alone (no scheduler, no worker: no generated job runs), as a real uvicorn
    process on the session's database and vhost, with all three storage tiers."""
    port = free_port()
    tiers = Path(tmp_path_factory.mktemp("tiers"))
    env = {**os.environ, **storage_env(tiers, e2e_moto), **test_env, "STRATUS_PORT": str(port)}
    log = (tiers / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.gateway"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tiers / "gateway.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway was not ready within 60 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:  # a graceful shutdown slowed by a busy machine
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def tenant_headers(gateway: str) -> Iterator[dict[str, str]]:
    """A tenant key with every scope; the jobs it submitted are cancelled afterwards, so that
    no test after this module finds them waiting in the session's database."""
    t = httpx.post(
        f"{gateway}/v1/tenants",
        json={"name": f"schemathesis-{time.time_ns()}", "quotas": {"requests_per_second": 1e5}},
        headers=ADMIN,
        timeout=10,
    )
    assert t.status_code == 201, t.text
    k = httpx.post(
        f"{gateway}/v1/tenants/{t.json()['id']}/keys", json={"name": "fuzz"}, headers=ADMIN
    )
    assert k.status_code == 201, k.text
    headers = {"Authorization": f"Bearer {k.json()['key']}"}
    yield headers
    for state in ("PENDING", "QUEUED"):
        listed = httpx.get(
            f"{gateway}/v1/jobs", params={"state": state, "limit": 500}, headers=headers
        ).json()["items"]
        for job in listed:
            httpx.post(f"{gateway}/v1/jobs/{job['id']}/cancel", headers=headers, timeout=10)


@pytest.fixture(scope="module")
def api_schema(gateway: str) -> Any:
    return schemathesis.openapi.from_url(f"{gateway}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,  # a 2xx with the key is probed again without it, and with a bad one: 401
]


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_responses_match_the_schema(case: Any, tenant_headers: dict[str, str]) -> None:
    headers = (
        ADMIN if case.path.startswith(("/v1/tenants", "/v1/admin", "/v1/audit")) else tenant_headers
    )
    case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
