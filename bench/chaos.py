"""Chaos benchmark: the chaos suite's run (``tests/chaos/harness.py``) with its figures and the
throughput during faults as a fraction of the throughput without faults, in the same run.

    .venv/bin/python bench/chaos.py [--jobs 2000] [--quick] [--workers 3]

Starts private PostgreSQL, Redis and RabbitMQ servers on ports of their own (never the
developer's servers) and the whole suite under supervisord on them; three tenants submit
``--jobs`` mixed jobs while workers are killed every few seconds and the scheduler, the
datamover, RabbitMQ, PostgreSQL and Redis each fail once. Prints every check and figure and
writes ``bench/results/chaos.json``. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo root

from tests.chaos.harness import LOGS, ChaosPlan, ChaosReport, ChaosRun, chaos_cluster

RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="200 jobs (what make test runs)")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=2, help="kernel slots per worker")
    return p.parse_args(argv)


def as_json(report: ChaosReport) -> dict[str, object]:
    f = report.findings
    return {
        "plan": dataclasses.asdict(report.plan),
        "submitted": f.submitted,
        "final": f.final,
        "succeeded": f.succeeded,
        "lost": f.lost,
        "by_state": f.by_state,
        "attempts": f.attempts,
        "double_outcomes": len(f.double_outcomes),
        "usage_rows": f.usage_rows,
        "usage_missing": f.usage_missing,
        "usage_extra": f.usage_extra,
        "outbox": f.outbox,
        "dead_letters": f.dead_letters,
        "problems": f.problems(),
        "recovery_s": report.recovery(),
        "calm_jobs_per_s": report.calm_jobs_per_s,
        "fault_jobs_per_s": report.fault_jobs_per_s,
        "throughput_ratio": report.throughput_ratio,
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    plan = ChaosPlan(
        jobs=200 if args.quick else args.jobs,
        workers=args.workers,
        concurrency=args.concurrency,
    )
    admin = "bench-admin-" + secrets.token_urlsafe(16)
    env = {
        "STRATUS_ADMIN_KEY": admin,
        "STRATUS_KEY_SECRET": "bench-" + secrets.token_urlsafe(16),
        "STRATUS_ENVIRONMENT": "test",
    }
    print(
        f"chaos: {plan.jobs} jobs, {plan.tenants} tenants, {plan.workers} workers x "
        f"{plan.concurrency} slots, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="stratus-chaos-") as tmp,
        chaos_cluster(Path(tmp), plan, env, keep_logs=LOGS) as (cluster, servers),
    ):
        report = asyncio.run(ChaosRun(cluster, servers, plan, admin).run())
    for line in report.lines():
        print(line)
    print(f"services' logs: {LOGS}")
    problems = report.findings.problems()
    print("checks: " + ("all passed" if not problems else "FAILED: " + "; ".join(problems)))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chaos.json").write_text(json.dumps(as_json(report), indent=2, default=str))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
