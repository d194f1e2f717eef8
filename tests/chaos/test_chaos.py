"""The chaos suite: the whole suite as processes on private servers, a mixed workload of
three tenants, and every kind of fault while it runs (``harness.py``); then nothing lost,
nothing doubled, usage once per attempt, queues and outbox empty, and each fault recovered.

``make test`` runs it with 200 jobs; ``make chaos`` with 2,000 (``CHAOS_JOBS``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.harness import LOGS, ChaosPlan, ChaosRun, chaos_cluster
from tests.conftest import ADMIN_KEY, RUN_ID

JOBS = int(os.environ.get("CHAOS_JOBS", "200"))


@pytest.mark.timeout(900 + JOBS)
async def test_chaos_nothing_lost_nothing_doubled(tmp_path_factory: pytest.TempPathFactory) -> None:
    plan = ChaosPlan(jobs=JOBS)
    root = Path(tmp_path_factory.mktemp("chaos"))
    env = {
        "STRATUS_ADMIN_KEY": ADMIN_KEY,
        "STRATUS_KEY_SECRET": "chaos-key-secret-" + RUN_ID,
        "STRATUS_ENVIRONMENT": "test",
    }
    with chaos_cluster(root, plan, env, keep_logs=LOGS) as (cluster, servers):
        report = await ChaosRun(cluster, servers, plan, ADMIN_KEY).run()
    print("\n".join(["", "chaos figures:", *report.lines()]))
    assert report.findings.problems() == []
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
