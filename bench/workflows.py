"""Benchmark of dependencies: how long a released job waits, and what a graph costs.

    .venv/bin/python bench/workflows.py [--chain N] [--width N] [--quick]

A whole local cluster (tools.cluster: 1 gateway, scheduler, 1 worker of concurrency 2,
datamover) on its own database, vhost and ports 19700-19800. Trivial jobs (``montecarlo_pi``,
samples=1000), each graph submitted as one workflow (one request, one transaction):

1. Chain: ``--chain`` (200) steps, each ``afterok`` the one before. Figure: the delay from a
   step's ``finished_at`` (SUCCEEDED) to the next one's ``started_at`` (RUNNING), p50 / p99 /
   max over the chain. Targets: p50 < 20 ms, p99 < 60 ms.
2. Diamond: a job, then an array of ``--width`` (2,000) elements ``afterok`` it, then a job
   ``afterok`` the array (1 -> 2,000 -> 1), from the first SUCCEEDED (``finished_at``) to the
   last. Reference, in the same run: the same three steps without dependencies. Target: the
   diamond takes at most 1.2x the reference.

``--quick`` (chain 20, width 200) is a smoke run; the figures mean something only on a quiet
machine (the cluster and this process share its cores). Results are printed and written to
``bench/results/workflows.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo root

from bench.cpu import CpuMeter, named, pids
from bench.events import new_tenant
from bench.pipeline import Teardown, machine, pct, say, source_state
from tools.cluster import (
    ClusterConfig,
    LocalCluster,
    drop_database,
    drop_vhost,
    prepare_database,
    prepare_vhost,
)
from tools.provision import postgres_settings

ROOT = Path(__file__).resolve().parent.parent
DB = VHOST = "stratus_bench_workflows"
RESULTS = ROOT / "bench" / "results"
RUN_DIR = RESULTS / "workflows-run"
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
TARGETS = {"chain_p50_ms": 20.0, "chain_p99_ms": 60.0, "diamond_ratio": 1.2}
TRIVIAL = {"kernel": "montecarlo_pi", "params": {"samples": 1000, "seed": 1}}


@dataclass(frozen=True)
class Options:
    chain: int
    width: int
    rounds: int


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="bench/workflows.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--chain", type=int, default=None, help="steps of the chain (200)")
    p.add_argument("--width", type=int, default=None, help="the diamond's middle (2000)")
    p.add_argument("--rounds", type=int, default=3, help="diamond pairs, median ratio (3)")
    p.add_argument("--quick", action="store_true", help="chain 20, width 200")
    a = p.parse_args(argv)
    chain = a.chain if a.chain is not None else (20 if a.quick else 200)
    width = a.width if a.width is not None else (200 if a.quick else 2000)
    if not 2 <= chain <= 500 or width < 1 or a.rounds < 1:
        p.error("--chain must be 2-500 (a workflow's steps), --width and --rounds positive")
    return Options(chain, width, a.rounds)


def after(step: str, condition: str = "afterok") -> dict[str, Any]:
    return {"depends_on": [{"step": step, "condition": condition}]}


async def submit(api: httpx.AsyncClient, name: str, steps: dict[str, Any]) -> dict[str, Any]:
    r = await api.post("/v1/workflows", json={"name": name, "steps": steps})
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


async def wait_final(api: httpx.AsyncClient, workflow_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await api.get(f"/v1/workflows/{workflow_id}")
        r.raise_for_status()
        state: str = r.json()["state"]
        if state in FINAL:
            return state
        await asyncio.sleep(0.5)
    raise RuntimeError(f"workflow {workflow_id} not final within {timeout:.0f} s")


async def chain(api: httpx.AsyncClient, db: asyncpg.Connection, n: int) -> dict[str, Any]:
    names = [f"s{i:03d}" for i in range(n)]
    steps = {names[0]: TRIVIAL}
    for prev, name in itertools.pairwise(names):
        steps[name] = {**TRIVIAL, **after(prev)}
    w = await submit(api, "chain", steps)
    state = await wait_final(api, w["id"], timeout=60 + 2.0 * n)
    ids = [w["steps"][name] for name in names]
    rows = await db.fetch(
        "SELECT id::text, started_at, finished_at FROM jobs WHERE id = ANY($1::uuid[])", ids
    )
    times = {r[0]: (r[1], r[2]) for r in rows}
    delays = [
        (times[b][0] - times[a][1]).total_seconds() * 1000
        for a, b in itertools.pairwise(ids)
        if times[a][1] is not None and times[b][0] is not None
    ]
    return {
        "steps": n,
        "state": state,
        "delay_ms": {
            "p50": pct(delays, 50),
            "p99": pct(delays, 99),
            "max": max(delays) if delays else float("nan"),
            "n": len(delays),
        },
    }


async def span(db: asyncpg.Connection, workflow_id: str) -> tuple[float, int]:
    """Seconds from the workflow's first SUCCEEDED job (or element) to its last; how many."""
    row = await db.fetchrow(
        """SELECT min(finished_at), max(finished_at), count(*) FROM jobs
           WHERE NOT is_array AND state = 'SUCCEEDED'
             AND (workflow_id = $1 OR array_id IN (SELECT id FROM jobs WHERE workflow_id = $1))""",
        workflow_id,
    )
    first, last, count = row[0], row[1], int(row[2])
    if first is None or last is None:
        return float("nan"), count
    return (last - first).total_seconds(), count


async def breakdown(db: asyncpg.Connection, workflow_id: str) -> dict[str, float]:
    """Where a diamond's time goes, in ms from the first step's finish: the fan-out's release
    (to the middle's first element RUNNING), the middle's run (to its last element's finish),
    the fan-in's release (to the last step's RUNNING) and the last step's run."""
    row = await db.fetchrow(
        """SELECT f.finished_at, min(e.started_at), max(e.finished_at), l.started_at,
                  l.finished_at, l.queued_at, l.dispatched_at, m.finished_at
           FROM workflows w
           JOIN jobs f ON f.id = (w.steps->>'first')::uuid
           JOIN jobs m ON m.id = (w.steps->>'middle')::uuid
           JOIN jobs l ON l.id = (w.steps->>'last')::uuid
           JOIN jobs e ON e.array_id = m.id
           WHERE w.id = $1
           GROUP BY f.finished_at, l.started_at, l.finished_at, l.queued_at, l.dispatched_at,
                    m.finished_at""",
        workflow_id,
    )
    if row is None or any(v is None for v in row[:5]):
        return {}
    t0 = row[0]

    def ms(t: datetime | None) -> float:
        return (t - t0).total_seconds() * 1000 if t is not None else float("nan")

    return {
        "middle_first_running_ms": ms(row[1]),
        "middle_last_finished_ms": ms(row[2]),
        "middle_array_final_ms": ms(row[7]),
        "last_queued_ms": ms(row[5]),
        "last_dispatched_ms": ms(row[6]),
        "last_running_ms": ms(row[3]),
        "last_finished_ms": ms(row[4]),
    }


async def diamond_once(
    api: httpx.AsyncClient, db: asyncpg.Connection, width: int, linked: bool
) -> dict[str, Any]:
    """One diamond (``linked``) or the same three steps without dependencies."""
    middle = {**TRIVIAL, "array": {"size": width, "index_param": "seed"}}
    steps = {
        "first": TRIVIAL,
        "middle": {**middle, **(after("first") if linked else {})},
        "last": {**TRIVIAL, **(after("middle") if linked else {})},
    }
    w = await submit(api, "diamond" if linked else "independent", steps)
    state = await wait_final(api, w["id"], timeout=120 + 0.5 * width)
    seconds, count = await span(db, w["id"])
    return {
        "state": state,
        "jobs": count,
        "first_to_last_s": seconds,
        "breakdown": await breakdown(db, w["id"]),
    }


async def diamond(
    api: httpx.AsyncClient, db: asyncpg.Connection, width: int, rounds: int
) -> dict[str, Any]:
    """``rounds`` pairs, each the steps without dependencies then the diamond, back to back
    (a busy machine's swings fall on both of a pair); the ratio is the median of the pairs'."""
    pairs: list[dict[str, Any]] = []
    for i in range(rounds):
        ind = await diamond_once(api, db, width, linked=False)
        dia = await diamond_once(api, db, width, linked=True)
        base = ind["first_to_last_s"]
        r = dia["first_to_last_s"] / base if base else float("nan")
        pairs.append({"independent": ind, "diamond": dia, "ratio": r})
        say(f"  diamond round {i + 1}: {dia['first_to_last_s']:.2f} s, without dependencies "
            f"{base:.2f} s, ratio {r:.2f}x")  # fmt: skip
    mid = sorted(pairs, key=lambda p: p["ratio"])[(len(pairs) - 1) // 2]
    return {**mid, "rounds": pairs, "ratios": [p["ratio"] for p in pairs]}


async def phases(cluster: LocalCluster, dsn: str, admin: dict[str, str], opts: Options) -> Any:
    gateway = cluster.url("gateway")
    _, headers = await new_tenant(gateway, admin)
    db = await asyncpg.connect(dsn)
    groups = {p: pids(*cluster.pids(p)) for p in ("gateway", "scheduler", "worker")}
    meter = CpuMeter({**groups, "PostgreSQL": named("postgres")})
    try:
        async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=120) as api:
            meter.start()
            c = await chain(api, db, opts.chain)
            say(f"  chain of {c['steps']}: {c['state']}, release delay p50 "
                f"{c['delay_ms']['p50']:.1f} ms, p99 {c['delay_ms']['p99']:.1f} ms")  # fmt: skip
            d = await diamond(api, db, opts.width, opts.rounds)
            cpu = meter.stop()
    finally:
        await db.close()
    return {"chain": c, "diamond": d, "cpu_s": cpu}


def run(opts: Options) -> dict[str, Any]:
    if RUN_DIR.exists():
        shutil.rmtree(RUN_DIR)
    RUN_DIR.mkdir(parents=True)
    admin_key = "bench-admin-" + secrets.token_urlsafe(16)
    senv = {
        "STRATUS_POSTGRES__DATABASE": DB,
        "STRATUS_RABBIT__VHOST": VHOST,
        "STRATUS_ADMIN_KEY": admin_key,
        "STRATUS_KEY_SECRET": secrets.token_urlsafe(32),
        "STRATUS_ENVIRONMENT": "bench",
        "STRATUS_LOG_LEVEL": "WARNING",
    }
    dsn = postgres_settings(senv).url(driver="postgresql")
    admin = {"Authorization": f"Bearer {admin_key}"}
    with Teardown() as teardown:
        say("Stratus workflows benchmark")
        say(f"  machine: {machine()}; PostgreSQL, RabbitMQ and Redis on this machine")
        say(f"  Stratus source: {source_state()}")
        teardown.add("drop database", lambda: drop_database(DB))
        teardown.add("drop vhost", lambda: drop_vhost(VHOST))
        drop_database(DB)
        prepare_database(DB)
        prepare_vhost(VHOST)
        cfg = ClusterConfig(run_dir=RUN_DIR / "cluster", env=senv, gateway_port=19700,
                            scheduler_port=19701, datamover_port=19703, worker_base_port=19710,
                            workers=1, worker_env={"STRATUS_CONCURRENCY": "2"},
                            python=sys.executable)  # fmt: skip
        cluster = LocalCluster(cfg)
        teardown.add("cluster", cluster.stop)
        cluster.start(timeout=120)
        say(f"  setup: 1 gateway, scheduler, 1 worker (concurrency 2); chain {opts.chain} "
            f"steps, diamond 1 -> {opts.width} -> 1; trivial montecarlo_pi jobs")  # fmt: skip
        results: dict[str, Any] = uvloop.run(phases(cluster, dsn, admin, opts))
    return results


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.monotonic()
    results = run(opts)
    c, d = results["chain"]["delay_ms"], results["diamond"]
    say()
    say(f"Summary ({datetime.now().astimezone().isoformat(timespec='seconds')})")
    ok50, ok99 = c["p50"] < TARGETS["chain_p50_ms"], c["p99"] < TARGETS["chain_p99_ms"]
    say(f"  chain, SUCCEEDED to the next RUNNING over {c['n']} links: "
        f"p50 {c['p50']:.1f} ms ({'met' if ok50 else 'MISSED'} < 20), "
        f"p99 {c['p99']:.1f} ms ({'met' if ok99 else 'MISSED'} < 60), "
        f"max {c['max']:.1f} ms")  # fmt: skip
    dia, ind = d["diamond"], d["independent"]
    okr = d["ratio"] <= TARGETS["diamond_ratio"]
    ratios = ", ".join(f"{r:.2f}" for r in d["ratios"])
    say(f"  diamond 1 -> {opts.width} -> 1, the median of {opts.rounds} pairs ({ratios}): "
        f"({dia['jobs']} jobs, {dia['state']}): first to last "
        f"SUCCEEDED {dia['first_to_last_s']:.2f} s; without dependencies ({ind['jobs']} jobs, "
        f"{ind['state']}) {ind['first_to_last_s']:.2f} s; ratio {d['ratio']:.2f}x "
        f"({'met' if okr else 'MISSED'} <= 1.2)")  # fmt: skip
    b = dia.get("breakdown") or {}
    if b:
        fan_in = b["last_running_ms"] - b["middle_last_finished_ms"]
        say(f"  the median diamond, ms after the first step's SUCCEEDED: the middle's first "
            f"element RUNNING {b['middle_first_running_ms']:.0f} (without dependencies "
            f"{ind['breakdown'].get('middle_first_running_ms', float('nan')):.0f}), its last "
            f"SUCCEEDED {b['middle_last_finished_ms']:.0f}; the last step QUEUED "
            f"{b['last_queued_ms']:.0f}, RUNNING {b['last_running_ms']:.0f} (fan-in "
            f"{fan_in:.0f} ms), SUCCEEDED {b['last_finished_ms']:.0f}")  # fmt: skip
    cpu = ", ".join(f"{k} {v:.1f} s" for k, v in results["cpu_s"].items())
    say(f"  CPU during the run: {cpu}")
    results["options"] = opts.__dict__
    results["machine"] = machine()
    results["source"] = source_state()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "workflows.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    say(f"  (results in {out.relative_to(ROOT)}; {time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
