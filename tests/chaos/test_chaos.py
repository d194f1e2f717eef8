"""The chaos suite: the whole suite as processes on private servers, a mixed workload of
three tenants with arrays among their jobs, and every kind of fault while it runs
(``harness.py``), aimed at the arrays too (``targets.py``); then nothing lost, nothing
doubled, usage once per attempt, queues and outbox empty, each array whole and consistent
with its counts (``array_checks.py``), long checkpointing jobs killed between two checkpoints
resumed exactly, having lost at most the interval (``long_jobs.py``), and each fault
recovered.

``make test`` runs it with 200 jobs; ``make chaos`` with 2,000 (``CHAOS_JOBS``). The servers
are the suite's own (``tools.private_servers``): stopping them disturbs no one."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.chaos import workload
from tests.chaos.harness import LOGS, ChaosRun, chaos_cluster
from tests.chaos.report import ChaosPlan, ChaosReport
from tests.conftest import ADMIN_KEY, RUN_ID
from tools.cluster import LocalCluster
from tools.private_servers import PrivateServers

JOBS = int(os.environ.get("CHAOS_JOBS", "200"))
PLAN = ChaosPlan(jobs=JOBS)
# stand-ins for the run's tenants: what the workload holds for a run of JOBS jobs
TENANTS = [workload.Tenant(str(n), f"t{n}", "") for n in range(PLAN.tenants)]


@pytest.fixture(scope="module")
def chaos(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalCluster, PrivateServers]]:
    env = {
        "STRATUS_ADMIN_KEY": ADMIN_KEY,
        "STRATUS_KEY_SECRET": "chaos-key-secret-" + RUN_ID,
        "STRATUS_ENVIRONMENT": "test",
    }
    root = Path(tmp_path_factory.mktemp("chaos"))
    with chaos_cluster(root, PLAN, env, keep_logs=LOGS) as pair:
        yield pair


@pytest.mark.timeout(600)  # with the start of the servers and the suite
async def test_a_job_accepted_while_rabbitmq_is_down_runs_after_it_returns(
    chaos: tuple[LocalCluster, PrivateServers],
) -> None:
    cluster, servers = chaos
    async with httpx.AsyncClient(base_url=cluster.url("gateway"), timeout=10) as api:
        [tenant] = await workload.create_tenants(api, ADMIN_KEY, 1, run=workload.run_id())
        await asyncio.to_thread(servers.ctl, "stop_app")
        try:
            r = await api.post(
                "/v1/jobs",
                json={"kernel": "montecarlo_pi", "params": {"samples": 5000}},
                headers=tenant.headers,
            )
            assert r.status_code == 201, r.text  # the outbox keeps the broker off the request
            await asyncio.sleep(1.0)
            job = (await api.get(f"/v1/jobs/{r.json()['id']}", headers=tenant.headers)).json()
            # admission needs only PostgreSQL; dispatch needs the broker: nothing runs yet
            assert job["state"] in {"PENDING", "QUEUED"}, job
        finally:
            await asyncio.to_thread(servers.ctl, "start_app")
        deadline = time.monotonic() + 120
        while job["state"] not in ("SUCCEEDED", "FAILED"):
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.2)
            got = await api.get(f"/v1/jobs/{r.json()['id']}", headers=tenant.headers)
            if got.status_code == 200:
                job = got.json()
        assert job["state"] == "SUCCEEDED", job


@pytest.mark.timeout(600 + JOBS)
async def test_chaos_nothing_lost_nothing_doubled(
    chaos: tuple[LocalCluster, PrivateServers],
) -> None:
    cluster, servers = chaos
    report = await ChaosRun(cluster, servers, PLAN, ADMIN_KEY).run()
    print("\n".join(["", "chaos figures:", *report.lines()]))
    assert report.findings.problems() == []
    assert report.long_jobs.problems() == []
    assert len(report.long_jobs.kills) == len(report.long_jobs.lost_s) >= 1, report.long_jobs
    kinds = report.recovery()
    assert set(kinds) >= {
        "kill -9 worker",
        "kill -9 scheduler",
        "kill -9 datamover",
        "restart rabbitmq",
        "restart postgres",
        "restart redis",
    }, kinds
    assert all(r is not None for r in kinds.values()), kinds
    arrays = [s for s in workload.job_specs(JOBS, TENANTS) if s.array]
    if arrays:  # a run too small for arrays has none (see workload.array_sizes)
        _faults_hit_arrays(report)
        bounded = [s for s in arrays if s.array and s.array.get("max_concurrent")]
        # max_concurrent was checked (from each element's history) for every bounded array
        assert len(report.findings.arrays.peaks) == len(bounded), report.findings.arrays


def _faults_hit_arrays(report: ChaosReport) -> None:
    """The faults landed on elements: a worker killed while it ran elements ended at least
    one of their attempts (the reaper's LOST row), and an element ran across the restart of
    PostgreSQL (started before it stopped, ended after it was back)."""
    hits = report.hits
    assert hits.kills_on_elements >= 1, hits
    assert hits.interrupted >= 1, hits
    assert hits.across_restart >= 1, hits
