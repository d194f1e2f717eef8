"""Prometheus and Grafana: the rules in deploy/prometheus pass ``promtool check rules`` and
their own unit tests (``promtool test rules``); a real Prometheus (Debian's package) scrapes
every service of a running cluster with those rules loaded; every metric the Grafana dashboard
names is one the services declare."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.metrics_core import Metric

from tests.conftest import ADMIN_KEY
from tests.console.conftest import ROOT
from tools.cluster import LocalCluster

# the package's cluster starts within the first test (a cold numba cache compiles kernels)
pytestmark = pytest.mark.timeout(600)

RULES = ROOT / "deploy" / "prometheus" / "stratus-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "stratus-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "stratus.json"
JOBS = {
    "stratus-gateway": "gateway",
    "stratus-scheduler": "scheduler",
    "stratus-datamover": "datamover",
    "stratus-worker": "worker",
}


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "ensure-tools.sh"), "prometheus"], check=True
        )
        found = shutil.which(name)
    assert found, f"{name} is not installed and scripts/ensure-tools.sh could not install it"
    return found


def test_rules_pass_promtool() -> None:
    promtool = tool("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {a["alertname"] for t in tests for a in t.get("alert_rule_test", [])}
    untested = alerts - tested - {"StratusOutboxBacklog"}
    assert not untested, f"alerts without a promtool unit test: {sorted(untested)}"


def declared_samples() -> set[str]:
    """The sample names the services' metrics can expose: every family in the shared
    registry, once every service's modules are imported, and the process collector's."""
    import services.datamover.app
    import services.gateway.app
    import services.scheduler.app
    import services.worker.app  # noqa: F401
    from shared.telemetry import REGISTRY

    suffixes = {
        "counter": ["_total", "_created"],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "summary": ["_sum", "_count", "_created"],
        "gauge": [""],
        "info": ["_info"],
    }
    names: set[str] = set()
    family: Metric
    for family in REGISTRY.collect():
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def recorded() -> set[str]:
    rules = yaml.safe_load(RULES.read_text())
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def test_dashboard_names_only_metrics_that_exist() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    named = set()
    for expr in exprs:
        named.update(re.findall(r"\b((?:stratus|process)_[a-z0-9_]+|stratus:[a-z0-9_:]+)\b", expr))
    exists = declared_samples() | recorded()
    missing = sorted(named - exists)
    assert not missing, f"the dashboard names metrics no service declares: {missing}"
    # and it covers what the alerts watch
    for needed in (
        "stratus_pool_demand_jobs",
        "stratus_circuit_state",
        "stratus_pool_live_workers",
        "stratus_pool_oldest_queued_seconds",
        "stratus_dead_letters",
        "stratus_tenant_quota_use_ratio",
        "stratus_events_delivery_lag_seconds_bucket",
    ):
        assert needed in named


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def prometheus(console_cluster: LocalCluster, tmp_path: Path) -> Iterator[str]:
    """A Prometheus scraping every service of the cluster each second, with the rules."""
    binary = tool("prometheus")
    scrape = [
        {
            "job_name": job,
            "scrape_interval": "1s",
            "static_configs": [{"targets": [console_cluster.url(svc).removeprefix("http://")]}],
        }
        for job, svc in JOBS.items()
    ]
    config = {
        "global": {"evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": scrape,
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_prometheus_scrapes_every_service(prometheus: str) -> None:
    deadline = time.monotonic() + 90
    with httpx.Client(base_url=prometheus, timeout=10) as client:
        up: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                r = client.get("/api/v1/query", params={"query": 'up{job=~"stratus-.*"}'})
                if r.status_code == 200:  # a Prometheus still starting answers 503, not JSON
                    up = {s["metric"]["job"]: s["value"][1] for s in r.json()["data"]["result"]}
            except httpx.TransportError:
                pass
            if up == dict.fromkeys(JOBS, "1"):
                break
            time.sleep(0.5)
        assert up == dict.fromkeys(JOBS, "1"), f"not every service scraped: {up}"
        # each service's own metrics arrive, and the rules loaded and evaluate without error
        r = client.get("/api/v1/query", params={"query": "count by (job) (stratus_dependency_up)"})
        jobs = {s["metric"]["job"] for s in r.json()["data"]["result"]}
        assert jobs == set(JOBS), jobs
        groups = client.get("/api/v1/rules").json()["data"]["groups"]
        loaded = [rule for g in groups for rule in g["rules"]]
        declared = yaml.safe_load(RULES.read_text())["groups"]
        assert len(loaded) == sum(len(g["rules"]) for g in declared)
        time.sleep(2)
        groups = client.get("/api/v1/rules").json()["data"]["groups"]
        bad = [
            (r["name"], r.get("lastError"))
            for g in groups
            for r in g["rules"]
            if r["health"] == "err"
        ]
        assert not bad, bad


def query(client: httpx.Client, expr: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = client.get("/api/v1/query", params={"query": expr}).json()[
        "data"
    ]["result"]
    return result


def query_until(client: httpx.Client, expr: str, within_s: float = 30.0) -> list[dict[str, Any]]:
    """``expr``'s samples once it has some: a scrape that fails (a busy host, a 1 s scrape
    timeout) marks its target's series stale, and an instant query then answers none."""
    deadline = time.monotonic() + within_s
    while not (found := query(client, expr)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def test_the_scheduler_monitor_gauges_reach_prometheus(
    prometheus: str, console_cluster: LocalCluster
) -> None:
    """A tenant whose jobs are all held (max_running_jobs 0) at its max_queued_jobs: its use
    of that quota is 1 in Prometheus; the dead letters of every durable queue are counted."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=console_cluster.url("gateway"), timeout=30) as api:
        name = f"full-{time.time_ns()}"
        quotas = {"max_running_jobs": 0, "max_queued_jobs": 2}
        tid = api.post("/v1/tenants", json={"name": name, "quotas": quotas}, headers=admin)
        key = api.post(f"/v1/tenants/{tid.json()['id']}/keys", json={"name": "k"}, headers=admin)
        tenant = {"Authorization": f"Bearer {key.json()['key']}"}
        spec = {"kernel": "montecarlo_pi", "params": {"samples": 1000, "seed": 1}}
        ids = [api.post("/v1/jobs", json=spec, headers=tenant).json()["id"] for _ in range(2)]
        try:
            with httpx.Client(base_url=prometheus, timeout=10) as client:
                expr = f'stratus_tenant_quota_use_ratio{{tenant="{name}"}}'
                deadline = time.monotonic() + 60
                use: dict[str, float] = {}
                while time.monotonic() < deadline:
                    use = {s["metric"]["quota"]: float(s["value"][1]) for s in query(client, expr)}
                    if use.get("max_queued_jobs") == 1.0:
                        break
                    time.sleep(1)
                assert use.get("max_queued_jobs") == 1.0, use
                assert use["max_running_jobs"] == 0.0
                dead = query_until(client, 'stratus_dead_letters{job="stratus-scheduler"}')
                assert {s["metric"]["queue"] for s in dead}, "no dead-letter gauge"
                assert all(float(s["value"][1]) == 0 for s in dead)
                lag_count = 'stratus_events_delivery_lag_seconds_count{job="stratus-gateway"}'
                assert query_until(client, lag_count), "the gateway serves no event stream lag"
                oldest = query_until(client, "stratus_pool_oldest_queued_seconds")
                assert {s["metric"]["pool"] for s in oldest} >= {"cpu", "cuda"}
        finally:
            for job_id in ids:
                api.post(f"/v1/jobs/{job_id}/cancel", headers=tenant)
