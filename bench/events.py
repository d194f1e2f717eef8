"""Benchmark of the events stream: many SSE subscribers while jobs run.

    .venv/bin/python bench/events.py [--subscribers N] [--rate R] [--duration S] [--quick]

A whole local cluster (tools.cluster: 1 gateway, scheduler, 1 worker, datamover) on its own
database, vhost and ports 19300-19400. Two phases with the same load, ``--rate`` trivial jobs/s
(``montecarlo_pi``, samples=1000) submitted on an open-loop schedule for ``--duration`` s:

1. no subscriber: the gateway's CPU for the submissions alone;
2. ``--subscribers`` streams of ``GET /v1/events`` on the gateway, each on its own connection,
   opened before the first submission.

Figures (phase 2): the delay from each event's ``at`` (set in the statement that commits the
transition, so the delay from the commit is at most this) to its arrival at each subscriber,
p50 / p99 / max over every (event, subscriber); events lost and duplicated (each subscriber's
ids against the tenant's ``job_events`` ids in the database); the gateway's CPU per
subscriber per event (phase 2's gateway CPU less phase 1's, over subscribers x events).
Reference: the same events read straight from the table on each NOTIFY by one connection of
the benchmark (no gateway, no ordering rule), their delay from ``at`` alike: what the
database and the machine cost before the feed adds anything.
Targets: p50 < 50 ms, p99 < 200 ms, nothing lost or duplicated. On a host where the reference
itself misses them (a saturated machine, the subscribers' own process late), the relative
target holds the feed to what it adds: at most 10 ms at p50 and 50 ms at p99 over the
reference of the same run.

The subscribers run in this process (asyncio, one httpx connection each) on the same machine:
on a small machine they compete with the cluster for the CPU, and the delays include that.
Results are printed and written to ``bench/results/events.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo root

from bench.cpu import CpuMeter, named, pids
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
DB = VHOST = "stratus_bench_events"
RESULTS = ROOT / "bench" / "results"
RUN_DIR = RESULTS / "events-run"
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
TARGETS = {"p50_ms": 50.0, "p99_ms": 200.0}
# What the feed may add to the reference measured in the same run (ms).
OVER_REFERENCE = {"p50": 10.0, "p99": 50.0}


@dataclass(frozen=True)
class Options:
    subscribers: int
    rate: float
    duration: float


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="bench/events.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--subscribers", type=int, default=100, help="SSE subscribers (100)")
    p.add_argument("--rate", type=float, default=100.0, help="jobs/s submitted (100)")
    p.add_argument("--duration", type=float, default=None, help="seconds of load (20)")
    p.add_argument("--quick", action="store_true", help="10 s of load")
    a = p.parse_args(argv)
    duration = a.duration if a.duration is not None else (10.0 if a.quick else 20.0)
    if a.subscribers < 1 or a.rate <= 0 or duration <= 0:
        p.error("--subscribers, --rate and --duration must be positive")
    return Options(a.subscribers, a.rate, duration)


@dataclass
class Subscriber:
    """One stream: the ids it received, in order, and each event's delay (seconds)."""

    ids: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, block: bytes, arrived: float) -> None:
        event_id = None
        data = b""
        for line in block.split(b"\n"):
            if line.startswith(b"id: "):
                event_id = int(line[4:])
            elif line.startswith(b"data: "):
                data = line[6:]
        if event_id is None:
            return
        self.ids.append(event_id)
        at = datetime.fromisoformat(orjson.loads(data)["at"]).timestamp()
        self.delays.append(arrived - at)


async def subscribe(client: httpx.AsyncClient, headers: dict[str, str], sub: Subscriber) -> None:
    async with client.stream("GET", "/v1/events", headers=headers) as r:
        r.raise_for_status()
        buffer = b""
        async for chunk in r.aiter_raw():
            arrived = time.time()
            sub.opened.set()
            buffer += chunk
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                if not block.startswith(b":"):
                    sub.take(block, arrived)


async def submit(gateway: str, headers: dict[str, str], opts: Options) -> int:
    """``opts.rate`` jobs/s for ``opts.duration`` s, each on its own schedule (open loop)."""
    n = int(opts.rate * opts.duration)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=gateway, headers=headers, limits=limits,
                                 timeout=60) as api:  # fmt: skip
        t0 = time.monotonic()

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, t0 + i / opts.rate - time.monotonic()))
            body = {"kernel": "montecarlo_pi", "params": {"samples": 1000, "seed": i}}
            r = await api.post("/v1/jobs", json=body)
            r.raise_for_status()

        await asyncio.gather(*(one(i) for i in range(n)))
    return n


@dataclass
class Probe:
    """The reference: each event read straight from the table on its NOTIFY (one LISTEN
    connection, no ordering rule, no gateway), its delay from ``at`` (seconds)."""

    delays: list[float] = field(default_factory=list)
    last: int = 0

    async def run(self, dsn: str, tenant_id: str, stop: asyncio.Event) -> None:
        listen, read = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        woken = asyncio.Event()
        await listen.add_listener("stratus_events", lambda *_: woken.set())
        self.last = await read.fetchval("SELECT coalesce(max(id), 0) FROM job_events")
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), 0.5)
                woken.clear()
                rows = await read.fetch(
                    "SELECT id, at FROM job_events WHERE tenant_id = $1 AND id > $2",
                    tenant_id, self.last,
                )  # fmt: skip
                now = time.time()
                for r in rows:
                    self.delays.append(now - r["at"].timestamp())
                    self.last = max(self.last, r["id"])
        finally:
            await listen.close()
            await read.close()


async def wait_final(db: asyncpg.Connection, tenant_id: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = await db.fetchval(
            "SELECT count(*) FROM jobs WHERE tenant_id = $1 AND state = ANY($2::text[])",
            tenant_id, list(FINAL),
        )  # fmt: skip
        if done >= n:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"jobs not final within {timeout:.0f} s")


async def new_tenant(gateway: str, admin: dict[str, str]) -> tuple[str, dict[str, str]]:
    async with httpx.AsyncClient(base_url=gateway, headers=admin, timeout=30) as api:
        body = {
            "name": f"events-{time.time_ns()}",
            "quotas": {"requests_per_second": 100_000, "max_queued_jobs": 100_000},
        }
        r = await api.post("/v1/tenants", json=body)
        r.raise_for_status()
        tenant_id = str(r.json()["id"])
        k = await api.post(f"/v1/tenants/{tenant_id}/keys", json={"name": "bench"})
        k.raise_for_status()
    return tenant_id, {"Authorization": f"Bearer {k.json()['key']}"}


async def phase(
    cluster: LocalCluster, dsn: str, admin: dict[str, str], opts: Options, subscribers: int
) -> dict[str, Any]:
    gateway = cluster.url("gateway")
    tenant_id, headers = await new_tenant(gateway, admin)
    db = await asyncpg.connect(dsn)
    meter = CpuMeter({"gateway": pids(*cluster.pids("gateway")), "PostgreSQL": named("postgres"),
                      "subscribers and load": pids(os.getpid())})  # fmt: skip
    subs = [Subscriber() for _ in range(subscribers)]
    limits = httpx.Limits(max_connections=subscribers + 1, max_keepalive_connections=0)
    client = httpx.AsyncClient(base_url=gateway, limits=limits, timeout=httpx.Timeout(120))
    tasks = [asyncio.ensure_future(subscribe(client, headers, s)) for s in subs]
    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(s.opened.wait() for s in subs))
        await asyncio.sleep(1.0)  # every stream live, past its catch-up
        start_id = await db.fetchval("SELECT coalesce(max(id), 0) FROM job_events")
        probe, probe_stop = Probe(), asyncio.Event()
        probing = asyncio.ensure_future(probe.run(dsn, tenant_id, probe_stop))
        meter.start()
        t0 = time.monotonic()
        n = await submit(gateway, headers, opts)
        await wait_final(db, tenant_id, n, timeout=300)
        expected = [
            r[0]
            for r in await db.fetch(
                "SELECT id FROM job_events WHERE tenant_id = $1 AND id > $2 ORDER BY id",
                tenant_id, start_id,
            )
        ]  # fmt: skip
        deadline = time.monotonic() + 60
        while subs and time.monotonic() < deadline:
            if all(len(s.ids) >= len(expected) for s in subs):
                break
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - t0
        cpu = meter.stop()
        probe_stop.set()
        await probing
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()
        await db.close()
    want = set(expected)
    lost = sum(len(want - set(s.ids)) for s in subs)
    duplicated = sum(len(s.ids) - len(set(s.ids)) for s in subs)
    out_of_order = sum(any(a >= b for a, b in zip(s.ids, s.ids[1:], strict=False)) for s in subs)
    delays = [d * 1000 for s in subs for d in s.delays]
    direct = [d * 1000 for d in probe.delays]
    return {
        "jobs": n,
        "events": len(expected),
        "subscribers": subscribers,
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "lost": lost,
        "duplicated": duplicated,
        "subscribers_out_of_order": out_of_order,
        "delay_ms": {
            "p50": pct(delays, 50),
            "p99": pct(delays, 99),
            "max": max(delays) if delays else float("nan"),
            "n": len(delays),
        },
        "direct_delay_ms": {"p50": pct(direct, 50), "p99": pct(direct, 99), "n": len(direct)},
    }


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
        say("Stratus events benchmark")
        say(f"  machine: {machine()}; PostgreSQL, RabbitMQ and Redis on this machine")
        say(f"  Stratus source: {source_state()}")
        teardown.add("drop database", lambda: drop_database(DB))
        teardown.add("drop vhost", lambda: drop_vhost(VHOST))
        drop_database(DB)
        prepare_database(DB)
        prepare_vhost(VHOST)
        cfg = ClusterConfig(run_dir=RUN_DIR / "cluster", env=senv, gateway_port=19300,
                            scheduler_port=19301, datamover_port=19303, worker_base_port=19310,
                            workers=1, worker_env={"STRATUS_CONCURRENCY": "2"},
                            python=sys.executable)  # fmt: skip
        cluster = LocalCluster(cfg)
        teardown.add("cluster", cluster.stop)
        cluster.start(timeout=120)
        say(f"  load: {opts.rate:g} jobs/s for {opts.duration:g} s; {opts.subscribers} subscribers")
        base = uvloop.run(phase(cluster, dsn, admin, opts, 0))
        say(f"  phase 1 (no subscriber): {base['jobs']} jobs, gateway "
            f"{base['cpu_s']['gateway']:.2f} s CPU")  # fmt: skip
        loaded = uvloop.run(phase(cluster, dsn, admin, opts, opts.subscribers))
    extra = loaded["cpu_s"]["gateway"] - base["cpu_s"]["gateway"]
    deliveries = loaded["events"] * loaded["subscribers"]
    loaded["gateway_cpu_us_per_subscriber_event"] = extra * 1e6 / deliveries if deliveries else 0
    return {"baseline": base, "subscribed": loaded}


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.monotonic()
    results = run(opts)
    s = results["subscribed"]
    d = s["delay_ms"]
    say()
    say(f"Summary ({datetime.now().astimezone().isoformat(timespec='seconds')})")
    say(f"  {s['jobs']} jobs, {s['events']} events x {s['subscribers']} subscribers "
        f"= {d['n']} deliveries in {s['elapsed_s']:.1f} s")  # fmt: skip
    ok50, ok99 = d["p50"] < TARGETS["p50_ms"], d["p99"] < TARGETS["p99_ms"]
    say(f"  delay at-to-arrival: p50 {d['p50']:.1f} ms ({'met' if ok50 else 'MISSED'} < 50), "
        f"p99 {d['p99']:.1f} ms ({'met' if ok99 else 'MISSED'} < 200), "
        f"max {d['max']:.1f} ms")  # fmt: skip
    r = s["direct_delay_ms"]
    say(f"  reference, read straight from the table on each NOTIFY (no gateway, no order): "
        f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms")  # fmt: skip
    added = {q: d[q] - r[q] for q in OVER_REFERENCE}
    s["added_over_reference_ms"] = added
    say("  the feed adds to the reference: " + ", ".join(
        f"{q} {added[q]:+.1f} ms ({'met' if added[q] <= OVER_REFERENCE[q] else 'MISSED'} "
        f"<= {OVER_REFERENCE[q]:g})" for q in OVER_REFERENCE))  # fmt: skip
    say(f"  lost {s['lost']}, duplicated {s['duplicated']}, "
        f"subscribers out of order {s['subscribers_out_of_order']}")  # fmt: skip
    say(f"  gateway CPU per subscriber per event: "
        f"{s['gateway_cpu_us_per_subscriber_event']:.1f} us "
        f"(phase 2 gateway {s['cpu_s']['gateway']:.2f} s less phase 1 "
        f"{results['baseline']['cpu_s']['gateway']:.2f} s)")  # fmt: skip
    cpu = ", ".join(f"{k} {v:.1f} s" for k, v in s["cpu_s"].items())
    say(f"  CPU during phase 2: {cpu}")
    results["options"] = opts.__dict__
    results["machine"] = machine()
    results["source"] = source_state()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "events.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    say(f"  (results in {out.relative_to(ROOT)}; {time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
