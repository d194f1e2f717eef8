"""Property-based requests against the gateway's own OpenAPI document: ``schemathesis run
/openapi.json -c all`` with a tenant key (the admin key on the admin routes), at least 30
examples per operation, and the stateful phase that follows the document's links (a created
job, migration or dataset to the operations that use its id). Every check: no 5xx; every
answer's status, content type, headers and body as the document declares; a request the
document allows is accepted and one it forbids is refused; undeclared methods get 405 with
``Allow``; auth is enforced; a deleted resource is gone."""

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

from tests.conftest import ADMIN_KEY
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


QUOTAS = {"requests_per_second": 1e5}  # the fuzzer's tenant, and what its teardown restores


@pytest.fixture(scope="module")
def tenant_headers(gateway: str) -> Iterator[dict[str, str]]:
    """A tenant key with every scope; the jobs it submitted are cancelled afterwards, so that
    no test after this module finds them waiting in the session's database."""
    t = httpx.post(
        f"{gateway}/v1/tenants",
        json={"name": f"schemathesis-{time.time_ns()}", "quotas": QUOTAS},
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
    # The admin routes are fuzzed with the admin key: the fuzzer may have suspended this
    # tenant, cut its quotas or revoked its key (it lists tenants and follows their ids).
    # Resume it with its quotas and clean up with a key made now.
    tenant = f"{gateway}/v1/tenants/{t.json()['id']}"
    restore = {"suspended": False, "quotas": QUOTAS}
    resumed = httpx.patch(tenant, json=restore, headers=ADMIN, timeout=10)
    assert resumed.status_code == 200, resumed.text
    fresh = httpx.post(f"{tenant}/keys", json={"name": "cleanup"}, headers=ADMIN, timeout=10)
    assert fresh.status_code == 201, fresh.text
    cleanup = {"Authorization": f"Bearer {fresh.json()['key']}"}
    for state in ("PENDING", "QUEUED"):
        for job in _listed(gateway, state, cleanup):
            httpx.post(f"{gateway}/v1/jobs/{job['id']}/cancel", headers=cleanup, timeout=10)


def _listed(gateway: str, state: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """The tenant's jobs in ``state``: asked again, a few times, while the gateway, just
    fuzzed, answers something else (its database breaker open, a request timed out)."""
    answer: httpx.Response | None = None
    for attempt in range(5):
        try:
            answer = httpx.get(
                f"{gateway}/v1/jobs",
                params={"state": state, "limit": 500},
                headers=headers,
                timeout=10,
            )
        except httpx.HTTPError:
            answer = None
        if answer is not None and answer.status_code == 200:
            items: list[dict[str, Any]] = answer.json()["items"]
            return items
        time.sleep(1 + attempt)
    detail = "no answer" if answer is None else f"{answer.status_code} {answer.text[:200]}"
    raise AssertionError(f"GET /v1/jobs?state={state} after fuzzing: {detail}")


EXAMPLES = 30  # per operation and phase

# POST /v1/jobs is refused with 422 for what no schema can say: an input dataset that does not
# exist, params that fail the kernel's own schema (served by GET /v1/kernels), a device no
# pool can run. Its other answers are held to the document like every operation's.
CONFIG = """
hooks = "tests.e2e.schemathesis_hooks"
request-timeout = 30

# Links: the document's own, and the Location headers. Links guessed from field names follow
# nullable ids too (a migration's job_id) and call GET /v1/jobs/None, a request the document
# itself forbids (job_id is a UUID).
[phases.stateful.inference]
algorithms = ["location-headers"]

[headers]
Authorization = "Bearer {tenant_key}"

# The events stream never ends (a keep-alive every 15 s): tests/gateway/test_events.py reads it.
[[operations]]
include-path = "/v1/events"
enabled = false

# A log read with ?follow=1 streams until its job ends, which a job that never runs (its
# dependency never ends, no worker for its device) never does: tests/gateway/test_job_log.py
# reads it.
[[operations]]
include-path-regex = "/log$"
enabled = false

[[operations]]
include-path-regex = "^/v1/(tenants|admin|audit)"
headers = {{ Authorization = "Bearer {admin_key}" }}

[[operations]]
include-path = "/v1/jobs"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "401", "403", "404", "409", "422", "429",
]
"""


def test_schemathesis_finds_nothing(
    gateway: str, tenant_headers: dict[str, str], tmp_path: Path
) -> None:
    tenant_key = tenant_headers["Authorization"].removeprefix("Bearer ")
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(tenant_key=tenant_key, admin_key=ADMIN_KEY))
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
        "run", f"{gateway}/openapi.json", "--checks", "all", "--max-examples", str(EXAMPLES),
        "--phases", "examples,coverage,fuzzing,stateful", "--no-color",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-20_000:]
    assert "Stateful" in output
