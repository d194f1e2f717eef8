"""Elastic scaling benchmark: the same bursty load under three set-ups, in one run.

    .venv/bin/python bench/scaling.py [--quick] [--bursts K] [--jobs N] [--gap S]
                                      [--samples M] [--max-workers W] [--cooldown S]

Load: ``--bursts`` bursts of ``--jobs`` ``montecarlo_pi`` jobs (``--samples`` samples each),
each burst submitted at once, the next one ``--gap`` seconds after the previous one finished.
Set-ups, each a fresh local cluster under supervisord (the ``local`` backend):

1. fixed: 1 worker;
2. fixed: ``--max-workers`` workers;
3. autoscaling from ``min=1`` to ``max=--max-workers`` (cooldown ``--cooldown``).

Every worker runs one job at a time on one thread. Per set-up it prints the completion time
(the sum over bursts of first submit to last job finished) and the worker-seconds used (worker
processes started and not stopped, sampled every 0.2 s from supervisord, integrated from the
first submit to the end of the last burst). Targets: autoscaling finishes within
1.25x the fixed-max time while using at most 0.7x its worker-seconds.

Everything lives on ports 19400-19600 and in a database and vhost ``stratus_bench_scaling_*``
of its own, dropped on exit. Results go to ``bench/results/scaling.json``; logs to
``bench/results/scaling-run/``. The machine is shared: only the ratios of one run mean much.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo root

from tools.cluster import (
    Autoscale,
    ClusterConfig,
    LocalCluster,
    drop_database,
    drop_vhost,
    prepare_database,
    prepare_vhost,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NAME = f"stratus_bench_scaling_{secrets.token_hex(3)}"  # per run: a vhost being deleted lingers
BASE_PORT = 19400
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


@dataclass
class Options:
    bursts: int
    jobs: int
    gap_s: float
    samples: int
    max_workers: int
    cooldown_s: float


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 bursts of 60 jobs")
    p.add_argument("--bursts", type=int, default=3)
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--gap", type=float, default=90.0)
    # about 1 s of one core per job: starting a worker costs 4-5 CPU seconds here
    # (interpreter, libraries, the warm kernel pool), which must be small beside a burst
    p.add_argument("--samples", type=int, default=300_000_000)  # about 1 s of one core
    p.add_argument("--max-workers", type=int, default=4)
    p.add_argument("--cooldown", type=float, default=10.0)
    a = p.parse_args(argv)
    if a.quick:
        a.bursts, a.jobs = 2, 60
    return Options(a.bursts, a.jobs, a.gap, a.samples, a.max_workers, a.cooldown)


def say(line: str = "") -> None:
    print(line, flush=True)


class WorkerMeter:
    """Integrates the number of worker processes up (started, not being stopped) over time."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.worker_seconds = 0.0
        self.peak = 0
        self._running = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last, count = time.monotonic(), len(self.cluster.up_workers())
        while self._running:
            time.sleep(0.2)
            now = time.monotonic()
            self.worker_seconds += count * (now - last)
            last, count = now, len(self.cluster.up_workers())
            self.peak = max(self.peak, count)

    def start(self) -> None:
        self._running = True
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self._thread.join()


@dataclass
class Outcome:
    setup: str
    burst_s: list[float] = field(default_factory=list)
    worker_seconds: float = 0.0
    peak_workers: int = 0
    failed: int = 0
    retried: int = 0

    @property
    def completion_s(self) -> float:
        return sum(self.burst_s)


async def tenant_headers(api: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, str]:
    r = await api.post("/v1/tenants", json={"name": f"bench-{time.time_ns()}"}, headers=admin)
    r.raise_for_status()
    tid = r.json()["id"]
    quotas = {"requests_per_second": 100_000, "max_queued_jobs": 100_000, "max_running_jobs": 1000}
    (
        await api.patch(f"/v1/tenants/{tid}", json={"quotas": quotas}, headers=admin)
    ).raise_for_status()
    k = await api.post(f"/v1/tenants/{tid}/keys", json={"name": "bench"}, headers=admin)
    k.raise_for_status()
    await asyncio.sleep(0.5)  # the quota change reaches the gateway's cache
    return {"Authorization": f"Bearer {k.json()['key']}"}


async def finished(api: httpx.AsyncClient, h: dict[str, str]) -> int:
    jobs = (await api.get("/v1/usage", headers=h)).json()["jobs"]
    return sum(int(jobs.get(s, 0)) for s in FINAL)


async def burst(
    api: httpx.AsyncClient, h: dict[str, str], opts: Options, done_before: int
) -> float:
    body = {"kernel": "montecarlo_pi", "params": {"samples": opts.samples}}
    sem = asyncio.Semaphore(16)

    async def submit() -> None:
        async with sem:
            for _ in range(5):
                r = await api.post("/v1/jobs", json=body, headers=h)
                if r.status_code == 201:
                    return
                await asyncio.sleep(0.5)
            r.raise_for_status()

    t0 = time.monotonic()
    await asyncio.gather(*(submit() for _ in range(opts.jobs)))
    while await finished(api, h) < done_before + opts.jobs:
        if time.monotonic() - t0 > 1800:
            raise RuntimeError("a burst did not finish within 30 minutes")
        await asyncio.sleep(0.25)
    return time.monotonic() - t0


async def drive(cluster: LocalCluster, opts: Options, admin: dict[str, str], out: Outcome) -> None:
    async with httpx.AsyncClient(base_url=cluster.url("gateway"), timeout=60) as api:
        h = await tenant_headers(api, admin)
        meter = WorkerMeter(cluster)
        meter.start()
        try:
            for i in range(opts.bursts):
                if i:
                    await asyncio.sleep(opts.gap_s)
                took = await burst(api, h, opts, i * opts.jobs)
                out.burst_s.append(took)
                say(
                    f"    burst {i + 1}: {took:.1f} s (workers up now: {len(cluster.up_workers())})"
                )
        finally:
            meter.stop()
        out.worker_seconds, out.peak_workers = meter.worker_seconds, meter.peak
        usage = (await api.get("/v1/usage", headers=h)).json()["jobs"]
        out.failed = sum(int(usage.get(s, 0)) for s in FINAL if s != "SUCCEEDED")
        cursor, retried = None, 0
        while True:
            params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            page = (await api.get("/v1/jobs", params=params, headers=h)).json()
            retried += sum(j["attempts"] > 1 for j in page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                break
        out.retried = retried


def run_setup(setup: str, opts: Options, env: dict[str, str], admin: dict[str, str]) -> Outcome:
    run_dir = RESULTS / "scaling-run" / setup
    shutil.rmtree(run_dir, ignore_errors=True)
    fixed = {"fixed-1": 1, "fixed-max": opts.max_workers}.get(setup)
    cfg = ClusterConfig(
        run_dir=run_dir,
        env=env,
        gateway_port=BASE_PORT,
        scheduler_port=BASE_PORT + 1,
        datamover_port=BASE_PORT + 3,
        worker_base_port=BASE_PORT + 100,
        workers=fixed or 1,
        worker_env={"STRATUS_CONCURRENCY": "1", "STRATUS_THREADS_PER_PROCESS": "1"},
        autoscale=None if fixed else Autoscale(min_workers=1, max_workers=opts.max_workers),
    )
    cluster = LocalCluster(cfg)
    say(f"  {setup}: starting")
    cluster.start(timeout=180)
    out = Outcome(setup)
    try:
        asyncio.run(drive(cluster, opts, admin, out))
    finally:
        cluster.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    admin_key = "bench-admin-" + secrets.token_urlsafe(16)
    env = {
        "STRATUS_POSTGRES__DATABASE": NAME,
        "STRATUS_RABBIT__VHOST": NAME,
        "STRATUS_ADMIN_KEY": admin_key,
        "STRATUS_KEY_SECRET": "bench-" + secrets.token_urlsafe(16),
        "STRATUS_ENVIRONMENT": "bench",
        "STRATUS_LOG_LEVEL": "WARNING",
        "STRATUS_STORAGE__LOCAL__ROOT": str(RESULTS / "scaling-run" / "data" / "local"),
        "STRATUS_STORAGE__ARCHIVE__ROOT": str(RESULTS / "scaling-run" / "data" / "archive"),
        "STRATUS_AUTOSCALE__COOLDOWN_S": str(opts.cooldown_s),
        "STRATUS_AUTOSCALE__INTERVAL_S": "0.5",
        "STRATUS_WORKER_TTL_S": "5",
    }
    admin = {"Authorization": f"Bearer {admin_key}"}
    say(
        f"bench/scaling.py: {opts.bursts} bursts of {opts.jobs} montecarlo_pi jobs "
        f"({opts.samples} samples), {opts.gap_s:.0f} s apart; max {opts.max_workers} workers, "
        f"cooldown {opts.cooldown_s:.0f} s; {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the start"
    )
    outcomes: list[Outcome] = []
    try:
        prepare_database(NAME)
        prepare_vhost(NAME)
        for setup in ("fixed-1", "fixed-max", "autoscale"):
            outcomes.append(run_setup(setup, opts, env, admin))
    finally:
        drop_database(NAME)
        drop_vhost(NAME)
    report(opts, outcomes)
    return 0


def report(opts: Options, outcomes: list[Outcome]) -> None:
    by = {o.setup: o for o in outcomes}
    say()
    head = ("set-up", "completion s", "worker-s", "peak", "failed", "retried")
    say("{:<12} {:>13} {:>10} {:>5} {:>7} {:>8}".format(*head))
    for o in outcomes:
        say(
            f"{o.setup:<12} {o.completion_s:>13.1f} {o.worker_seconds:>10.1f} "
            f"{o.peak_workers:>5} {o.failed:>7} {o.retried:>8}"
        )
    auto, top, one = by["autoscale"], by["fixed-max"], by["fixed-1"]
    time_ratio = auto.completion_s / top.completion_s
    ws_ratio = auto.worker_seconds / top.worker_seconds
    say()
    say(
        f"autoscale / fixed-max: time {time_ratio:.2f}x (target <= 1.25: "
        f"{'met' if time_ratio <= 1.25 else 'MISSED'}), worker-seconds {ws_ratio:.3f}x "
        f"(target <= 0.70: {'met' if ws_ratio <= 0.7 else 'MISSED'})"
    )
    say(
        f"fixed-1 / fixed-max: time {one.completion_s / top.completion_s:.2f}x, "
        f"worker-seconds {one.worker_seconds / top.worker_seconds:.2f}x"
    )
    say(f"load average at the end {os.getloadavg()[0]:.1f}")
    result = {
        "options": opts.__dict__,
        "setups": {o.setup: {**o.__dict__, "completion_s": o.completion_s} for o in outcomes},
        "autoscale_vs_fixed_max": {"time": time_ratio, "worker_seconds": ws_ratio},
    }
    (RESULTS / "scaling.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
