"""What one element of a trivial array costs the database, the broker and the CPU.

    .venv/bin/python bench/array_cost.py [--size N] [--arrays K] [--no-chunks] [--idle S]
                                         [--private]

Starts a local cluster as ``bench/job_cost.py`` does (1 gateway, 1 scheduler, 1 worker,
datamover; database and vhost ``stratus_arraycost``, dropped on exit), runs a warm-up array,
measures the idle background for ``--idle`` seconds, then submits ``--arrays`` arrays (1; 20
with ``--size 100`` is the pipeline's 20 x 100 case) of ``--size``
``montecarlo_pi`` elements (samples=1000, no datasets) and waits until it has SUCCEEDED and
the outbox is empty. Printed per element, less the background: PostgreSQL row writes
(inserted + updated + deleted, ``pg_stat_user_tables``) per table, transactions, messages
published, and CPU time of the cluster's processes (supervisord's tree), the database's
backends and RabbitMQ, from ``/proc``, and the database's PL/pgSQL functions (the
triggers) per element, calls and self time. ``--no-chunks`` runs the scheduler with
``STRATUS_ARRAY_CHUNKS=false`` (one row, message and claim per element) for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from pathlib import Path

import aio_pika
import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo root

from bench.job_cost import (
    TAP,
    Meter,
    _named,
    _tree,
    cpu_s,
    delta,
    functions_report,
    git_head,
    new_tenant,
    report,
    tap_counts,
    track_functions,
)
from tools.cluster import (
    ClusterConfig,
    LocalCluster,
    drop_database,
    drop_vhost,
    prepare_database,
    prepare_vhost,
)
from tools.private_servers import PrivateServers
from tools.provision import postgres_settings, rabbit_settings

ROOT = Path(__file__).resolve().parent.parent
DB = VHOST = "stratus_arraycost"
RUN_DIR = ROOT / "bench" / "results" / "array-cost-run"
EXCHANGE = "stratus.events"


async def processes(cluster: LocalCluster, meter: Meter) -> set[int]:
    """The cluster's processes, the database's backends and RabbitMQ's."""
    root = cluster.supervisord_pid()
    pids = _tree(root) if root is not None else set()
    rows = await meter.query("SELECT pid FROM pg_stat_activity WHERE datname = $1", DB)
    return pids | {int(r[0]) for r in rows} | _named("beam.smp")


async def submit_array(gateway: str, key: dict[str, str], size: int) -> str:
    body = {
        "kernel": "montecarlo_pi",
        "params": {"samples": 1000},
        "array": {"size": size, "index_param": "seed"},
    }
    async with httpx.AsyncClient(base_url=gateway, headers=key, timeout=30) as api:
        r = await api.post("/v1/jobs", json=body)
        r.raise_for_status()
        return str(r.json()["id"])


async def wait_array(meter: Meter, array_id: str, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await meter.query(
            "SELECT (SELECT state FROM jobs WHERE id = $1::uuid), (SELECT count(*) FROM outbox)",
            array_id,
        )
        state, outbox = rows[0]
        if state in ("FAILED", "CANCELLED"):
            raise RuntimeError(f"the array ended {state}")
        if state == "SUCCEEDED" and outbox == 0:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the array did not finish in time")


async def measure(
    cluster: LocalCluster, admin_key: str, opts: argparse.Namespace, env: dict[str, str]
) -> None:
    gateway = cluster.url("gateway")
    db = await asyncpg.connect(postgres_settings(env).url(driver="postgresql"))
    broker = await aio_pika.connect(rabbit_settings(env).url())
    try:
        channel = await broker.channel()
        tap = await channel.declare_queue(TAP, auto_delete=True)
        await tap.bind(EXCHANGE, "#")
        meter = Meter(db)
        key = await new_tenant(gateway, admin_key)
        await wait_array(meter, await submit_array(gateway, key, 300))  # warm-up
        await tap_counts(channel)

        pids = await processes(cluster, meter)
        before, cpu0 = await meter.snapshot(), cpu_s(pids)
        await asyncio.sleep(opts.idle)
        after, cpu1 = await meter.snapshot(), cpu_s(pids)
        idle_s = after.at - before.at
        idle_x, idle_t = delta(before, after)
        idle_cpu = (cpu1 - cpu0) / idle_s
        idle_msgs = sum((await tap_counts(channel)).values())

        pids = await processes(cluster, meter)
        start, cpu2 = await meter.snapshot(), cpu_s(pids)
        t0 = time.monotonic()
        ids = await asyncio.gather(
            *(submit_array(gateway, key, opts.size) for _ in range(opts.arrays))
        )
        for array_id in ids:
            await wait_array(meter, array_id)
        run_s = time.monotonic() - t0
        pids |= await processes(cluster, meter)
        end, cpu3 = await meter.snapshot(), cpu_s(pids)
        msgs = await tap_counts(channel)
        xacts, tables = delta(start, end)
        window = end.at - start.at
        n = opts.size * opts.arrays
        scale = window / idle_s
        net = {
            name: tuple(v - round(b * scale) for v, b in zip(vals, idle_t.get(name, (0, 0, 0)),
                                                             strict=True))
            for name, vals in tables.items()
        }  # fmt: skip
        chunks = "off (one row, message and claim per element)" if opts.no_chunks else "on"
        shape = f"{opts.arrays} arrays of {opts.size}" if opts.arrays > 1 else f"array of {n}"
        print(f"{shape} elements, chunks {chunks}: {run_s:.1f} s, {n / run_s:.0f} elements/s")
        print(f"background over {idle_s:.1f} s idle: {idle_x / idle_s:.1f} transactions/s, "
              f"{idle_cpu * 1000:.0f} ms CPU/s, {idle_msgs} messages")  # fmt: skip
        report("less background", n, xacts - idle_x * scale, net)  # type: ignore[arg-type]
        writes = sum(sum(v) for v in net.values())
        cpu = (cpu3 - cpu2) - idle_cpu * window
        print(f"per element: {writes / n:.2f} row writes, {cpu * 1000 / n:.2f} ms CPU "
              f"(cluster, database backends, RabbitMQ), "
              f"{sum(msgs.values()) / n:.3f} messages")  # fmt: skip
        functions_report(n, start, end)
    finally:
        await broker.close()
        await db.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--arrays", type=int, default=1, help="arrays submitted at once")
    parser.add_argument("--idle", type=float, default=6.0)
    parser.add_argument("--no-chunks", action="store_true", help="one row per element")
    parser.add_argument("--private", action="store_true", help="servers of its own")
    opts = parser.parse_args(argv)
    servers = PrivateServers.create() if opts.private else None
    try:
        if servers is not None:
            servers.start()
        return run(opts, servers)
    finally:
        if servers is not None:
            servers.stop()


def run(opts: argparse.Namespace, servers: PrivateServers | None) -> int:
    admin_key = "arraycost-admin-" + secrets.token_urlsafe(16)
    env = {
        **(servers.env() if servers is not None else {"STRATUS_RABBIT__VHOST": VHOST}),
        "STRATUS_POSTGRES__DATABASE": DB,
        "STRATUS_ADMIN_KEY": admin_key,
        "STRATUS_KEY_SECRET": secrets.token_urlsafe(32),
        "STRATUS_ENVIRONMENT": "bench",
        "STRATUS_ARRAY_CHUNKS": "false" if opts.no_chunks else "true",
    }
    drop_database(DB, env=env)
    prepare_database(DB, env=env)
    track_functions(DB, env)
    if servers is None:
        prepare_vhost(VHOST)
    cfg = ClusterConfig(
        run_dir=RUN_DIR,
        env=env,
        gateway_port=19410,
        scheduler_port=19411,
        datamover_port=19413,
        worker_base_port=19520,
        workers=1,
        python=sys.executable,
    )
    cluster = LocalCluster(cfg)
    try:
        cluster.start(timeout=120)
        print(f"array cost, {os.cpu_count()} cores, source {git_head()}")
        asyncio.run(measure(cluster, admin_key, opts, env))
    finally:
        cluster.stop()
        if servers is None:
            drop_database(DB)
            drop_vhost(VHOST)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
