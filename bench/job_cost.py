"""What one trivial job costs the database and the broker, per job.

    .venv/bin/python bench/job_cost.py [--jobs N] [--clients C] [--idle S] [--private]

Starts a local cluster (``tools.cluster``: 1 gateway, 1 scheduler, 1 worker, datamover; ports
19400-19600, database and vhost ``stratus_jobcost``, dropped on exit), runs a warm-up, then:

1. idle: ``--idle`` seconds with nothing submitted, for the background rate (the scheduler's
   periodic passes, heartbeats, relay polls), which is subtracted from the run below;
2. the run: ``--jobs`` trivial ``montecarlo_pi`` jobs (samples=1000) from ``--clients``
   concurrent clients, until all are SUCCEEDED and the outbox is empty.

It prints per job: PostgreSQL transactions (``pg_stat_database``, less this script's own
queries), rows inserted, updated and deleted per table (``pg_stat_user_tables``), the
messages published per routing key (a queue of its own bound to ``#`` on the events
exchange sees every publish) with the queues they reach, CPU time per process (each
service of the cluster, the database's backends, RabbitMQ; from ``/proc``, less the idle
background), and the calls and time of the database's PL/pgSQL functions, the triggers
among them (``pg_stat_user_functions``: the database runs with ``track_functions = pl``), and
the scans of each index of ``jobs`` (``pg_stat_user_indexes``).
CPU and function times are times, so a busy host inflates them; the counts are not.

``--private`` runs it on PostgreSQL, RabbitMQ and Redis of its own
(``tools.private_servers``, started and stopped with it) instead of the machine's.
``--statements`` (private servers too, their PostgreSQL with ``pg_stat_statements`` loaded)
also prints the statements that cost the database most over the run, each with its calls
and execution time per job (the run's background included; execution time only, not
parsing, commits or WAL). ``--plans MS`` (private servers too, ``auto_explain`` loaded) keeps
the plan, with its row counts and buffers, of every statement that ran for ``MS`` ms or more,
in ``bench/results/job-cost-plans.log``, and prints how many each statement had and their
median time. These times are wall-clock: on a host the run saturates they include the time a
backend waited for a core, so read the plans' row counts and buffers before their times.

The cluster's scheduler vacuums as ``make up``'s and ``bench/pipeline.py``'s do
(``STRATUS_DB_VACUUM``: only where the server's autovacuum is off; ``--pg-option
autovacuum=off`` gives the private PostgreSQL that setting, ``--pg-option`` any other).
``--env STRATUS_NAME=VALUE`` sets a setting of the cluster's services, to compare it in turns
(``--env STRATUS_DISPATCH_OUTBOX=true``: every dispatch through the outbox, as before the
scheduler published them itself).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo root

from shared.messaging.topology import DURABLE_QUEUES
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
DB = VHOST = "stratus_jobcost"
RUN_DIR = ROOT / "bench" / "results" / "job-cost-run"
PLANS = ROOT / "bench" / "results" / "job-cost-plans.log"
EXCHANGE = "stratus.events"
TAP = "bench.jobcost.tap"
# PostgreSQL publishes a backend's counters at most once a second, and an idle backend's
# within about 10 s: a snapshot waits until the counted inserts match the tables' rows
STATS_SETTLE_S = 1.5
SETTLE_TIMEOUT_S = 25.0
SETTLED = """
    SELECT (SELECT count(*) FROM jobs) = (SELECT n_tup_ins FROM pg_stat_user_tables
                                          WHERE relname = 'jobs')
       AND (SELECT count(*) FROM job_events) = (SELECT n_tup_ins - n_tup_del
                                                FROM pg_stat_user_tables
                                                WHERE relname = 'job_events')
       AND (SELECT count(*) FROM job_attempts) = (SELECT n_tup_ins FROM pg_stat_user_tables
                                                  WHERE relname = 'job_attempts')
       AND (SELECT count(*) FROM outbox) = (SELECT n_tup_ins - n_tup_del
                                            FROM pg_stat_user_tables WHERE relname = 'outbox')
"""

FUNCTION_COUNTERS = """
    SELECT funcname, calls, self_time FROM pg_stat_user_functions
"""
TICK = os.sysconf("SC_CLK_TCK")
SERVICES = ("gateway", "scheduler", "worker", "datamover")

TABLE_COUNTERS = """
    SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables
"""
DB_COUNTERS = """
    SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()
"""


@dataclass
class Snapshot:
    transactions: int
    tables: dict[str, tuple[int, int, int]]
    at: float
    functions: dict[str, tuple[int, float]] = field(default_factory=dict)  # calls, self ms


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the state on (3rd)


def _tree(root: int) -> set[int]:
    """``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def _named(name: str) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                pids.add(int(entry.name))
        except OSError:
            continue
    return pids


def cpu_s(pids: set[int]) -> float:
    """CPU seconds (user + system, with waited-for children) of ``pids`` so far."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / TICK


def _service_of(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    for name in SERVICES:
        if any(a.decode(errors="replace").startswith(f"services.{name}") for a in args):
            return name
    return "other"


async def process_groups(cluster: LocalCluster, meter: Meter, database: str) -> dict[str, set[int]]:
    """The cluster's processes by service (a worker's kernel processes with it), the
    database's backends (``postgres``) and RabbitMQ's (``rabbitmq``)."""
    groups: dict[str, set[int]] = {}
    root = cluster.supervisord_pid()
    for pid in _tree(root) if root is not None else set():
        groups.setdefault(_service_of(pid), set()).add(pid)
    rows = await meter.query("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    groups["postgres"] = {int(r[0]) for r in rows}
    groups["rabbitmq"] = _named("beam.smp")
    return groups


def group_cpu(groups: dict[str, set[int]]) -> dict[str, float]:
    return {name: cpu_s(pids) for name, pids in groups.items()}


class Meter:
    """The database's counters, less the transactions this meter itself runs."""

    def __init__(self, db: asyncpg.Connection) -> None:
        self.db = db
        self.own = 0  # statements (each a transaction) this script ran on the database

    async def query(self, sql: str, *args: Any) -> Any:
        self.own += 1
        return await self.db.fetch(sql, *args)

    async def snapshot(self) -> Snapshot:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            await asyncio.sleep(STATS_SETTLE_S)
            await self.query("SELECT pg_stat_clear_snapshot()")
            if (await self.query(SETTLED))[0][0] or time.monotonic() > deadline:
                break
        xacts = (await self.query(DB_COUNTERS))[0][0]
        tables = {r[0]: (r[1], r[2], r[3]) for r in await self.query(TABLE_COUNTERS)}
        functions = {r[0]: (int(r[1]), float(r[2])) for r in await self.query(FUNCTION_COUNTERS)}
        return Snapshot(int(xacts) - self.own, tables, time.monotonic(), functions)


def delta(a: Snapshot, b: Snapshot) -> tuple[float, dict[str, tuple[int, int, int]]]:
    tables = {
        name: tuple(y - x for x, y in zip(a.tables.get(name, (0, 0, 0)), v, strict=True))
        for name, v in b.tables.items()
    }
    return b.transactions - a.transactions, {k: v for k, v in tables.items() if any(v)}  # type: ignore[misc]


async def tap_counts(channel: aio_pika.abc.AbstractChannel) -> Counter[str]:
    """Empty the tap queue: the messages published since the last call, by routing key."""
    queue = await channel.get_queue(TAP)
    counts: Counter[str] = Counter()
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        counts[message.routing_key or ""] += 1
    return counts


def queues_of(routing_key: str) -> list[str]:
    """The durable queues a routing key reaches (per-process control queues not listed)."""
    return [q.name for q in DURABLE_QUEUES if routing_key in q.bindings]


async def new_tenant(gateway: str, admin_key: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as api:
        admin = {"Authorization": f"Bearer {admin_key}"}
        body = {
            "name": f"jobcost-{time.time_ns()}",
            "quotas": {"requests_per_second": 100_000, "max_queued_jobs": 100_000},
        }
        r = await api.post("/v1/tenants", json=body, headers=admin)
        r.raise_for_status()
        k = await api.post(f"/v1/tenants/{r.json()['id']}/keys", json={"name": "b"}, headers=admin)
        k.raise_for_status()
    return {"Authorization": f"Bearer {k.json()['key']}"}


async def submit(gateway: str, key: dict[str, str], n: int, clients: int) -> None:
    seq = iter(range(n))

    async def client(api: httpx.AsyncClient) -> None:
        for i in seq:
            body = {"kernel": "montecarlo_pi", "params": {"samples": 1000, "seed": i}}
            r = await api.post("/v1/jobs", json=body)
            r.raise_for_status()

    async with httpx.AsyncClient(base_url=gateway, headers=key, timeout=30) as api:
        await asyncio.gather(*(client(api) for _ in range(clients)))


async def wait_done(meter: Meter, n: int, timeout: float = 300.0) -> None:
    """Until ``n`` more jobs have succeeded than before and the outbox is empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await meter.query(
            "SELECT (SELECT count(*) FROM jobs WHERE state = 'SUCCEEDED'), "
            "(SELECT count(*) FROM jobs WHERE state NOT IN ('SUCCEEDED')), "
            "(SELECT count(*) FROM outbox)"
        )
        ok, other, outbox = rows[0]
        if ok >= n and other == 0 and outbox == 0:
            return
        await asyncio.sleep(0.25)
    raise RuntimeError("the jobs did not finish in time")


def report(title: str, n: int, xacts: float, tables: dict[str, tuple[int, int, int]]) -> None:
    ins = sum(v[0] for v in tables.values())
    upd = sum(v[1] for v in tables.values())
    dele = sum(v[2] for v in tables.values())
    print(f"{title}: {xacts / n:.2f} transactions, rows {ins / n:.2f} inserted, "
          f"{upd / n:.2f} updated, {dele / n:.2f} deleted per job")  # fmt: skip
    for name, (i, u, d) in sorted(tables.items()):
        print(f"    {name:<20} ins {i / n:6.2f}  upd {u / n:6.2f}  del {d / n:6.2f}")


def cpu_report(
    n: int, window: float, idle_s: float, idle: dict[str, float], run: dict[str, float]
) -> None:
    """CPU ms per job by process group, less the idle background scaled to the window."""
    per = {k: (v - idle.get(k, 0.0) / idle_s * window) * 1000 / n for k, v in run.items()}
    parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
    print(f"CPU ms per job, less background: {sum(per.values()):.2f} in all ({parts})")


def functions_report(n: int, a: Snapshot, b: Snapshot) -> None:
    """Calls and self time per job of the database's PL/pgSQL functions (triggers)."""
    rows: list[tuple[str, float, float]] = []
    for name, (calls, ms) in b.functions.items():
        c0, m0 = a.functions.get(name, (0, 0.0))
        if calls > c0:
            rows.append((name, (calls - c0) / n, (ms - m0) / n))
    total = sum(r[2] for r in rows)
    print(f"database functions per job: {total:.3f} ms self time in all")
    for name, per_job, self_ms in sorted(rows, key=lambda r: -r[2]):
        print(f"    {name:<28} calls {per_job:6.2f}  self {self_ms:7.3f} ms")


async def measure(
    cluster: LocalCluster, admin_key: str, opts: argparse.Namespace, env: dict[str, str]
) -> None:
    gateway = cluster.url("gateway")
    pg = postgres_settings(env)
    amqp = rabbit_settings(env).url()
    db = await asyncpg.connect(pg.url(driver="postgresql"))
    broker = await aio_pika.connect(amqp)
    try:
        channel = await broker.channel()
        tap = await channel.declare_queue(TAP, auto_delete=True)
        await tap.bind(EXCHANGE, "#")
        meter = Meter(db)
        key = await new_tenant(gateway, admin_key)
        await submit(gateway, key, 20, opts.clients)  # warm-up: imports, JIT, prepared plans
        await wait_done(meter, 20)
        await tap_counts(channel)

        groups = await process_groups(cluster, meter, DB)
        before, cpu0 = await meter.snapshot(), group_cpu(groups)
        await asyncio.sleep(opts.idle)
        after, cpu1 = await meter.snapshot(), group_cpu(groups)
        idle_s = after.at - before.at
        idle_x, idle_t = delta(before, after)
        idle_cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
        idle_msgs = await tap_counts(channel)

        groups = await process_groups(cluster, meter, DB)
        if opts.statements:
            await db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await db.execute("SELECT pg_stat_statements_reset()")
        start, cpu2 = await meter.snapshot(), group_cpu(groups)
        indexes0 = await index_scans(db)
        t0 = time.monotonic()
        await submit(gateway, key, opts.jobs, opts.clients)
        await wait_done(meter, opts.jobs + 20)
        run_s = time.monotonic() - t0
        end, cpu3 = await meter.snapshot(), group_cpu(groups)
        msgs = await tap_counts(channel)
        xacts, tables = delta(start, end)
        window = end.at - start.at
        n = opts.jobs
        print(f"{n} jobs from {opts.clients} clients in {run_s:.1f} s "
              f"(counters over {window:.1f} s)")  # fmt: skip
        print(f"background over {idle_s:.1f} s idle: {idle_x / idle_s:.1f} transactions/s, "
              f"{sum(sum(v) for v in idle_t.values()) / idle_s:.1f} row writes/s, "
              f"{sum(idle_msgs.values())} messages, "
              f"{sum(idle_cpu.values()) / idle_s * 1000:.0f} ms CPU/s")  # fmt: skip
        scale = window / idle_s
        net_tables = {
            name: tuple(v - round(b * scale) for v, b in zip(vals, idle_t.get(name, (0, 0, 0)),
                                                             strict=True))
            for name, vals in tables.items()
        }  # fmt: skip
        report("raw", n, xacts, tables)
        report("less background", n, xacts - idle_x * scale, net_tables)  # type: ignore[arg-type]
        print("messages published per job (routing key -> durable queues it reaches):")
        for rk, count in sorted(msgs.items()):
            print(f"    {rk:<22} {count / n:5.2f}  -> {', '.join(queues_of(rk)) or '-'}")
        deliveries = sum(c * len(queues_of(rk)) for rk, c in msgs.items())
        print(f"    in all: {sum(msgs.values()) / n:.2f} published, {deliveries / n:.2f} "
              "deliveries on durable queues")  # fmt: skip
        cpu_report(n, window, idle_s, idle_cpu, {k: cpu3[k] - cpu2[k] for k in cpu2})
        functions_report(n, start, end)
        indexes_report(n, indexes0, await index_scans(db))
        if opts.statements:
            await statements_report(db, n, opts.top)
    finally:
        await broker.close()
        await db.close()


async def index_scans(db: asyncpg.Connection) -> dict[str, tuple[int, int]]:
    """Each index of ``jobs``: its scans and the entries they read so far."""
    rows = await db.fetch(
        "SELECT indexrelname, idx_scan, idx_tup_read FROM pg_stat_user_indexes "
        "WHERE relname = 'jobs'"
    )
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


def indexes_report(n: int, a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]]) -> None:
    """The scans of each index of ``jobs`` per job over the run (every index costs each
    update that is not HOT an entry, so one nobody scans is paid for for nothing)."""
    print("indexes of jobs, per job: scans, entries read (the statistics trail by a second)")
    for name in sorted(b, key=lambda k: -(b[k][0] - a.get(k, (0, 0))[0])):
        scans, read = (x - y for x, y in zip(b[name], a.get(name, (0, 0)), strict=True))
        print(f"    {name:<36} {scans / n:7.2f} {read / n:9.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--idle", type=float, default=6.0)
    parser.add_argument("--private", action="store_true", help="servers of its own")
    parser.add_argument(
        "--statements",
        action="store_true",
        help="private servers with pg_stat_statements: the costliest statements per job",
    )
    parser.add_argument("--top", type=int, default=20, help="statements to print (20)")
    parser.add_argument(
        "--plans",
        type=float,
        metavar="MS",
        help="private servers with auto_explain: keep the plans of statements of MS ms or more",
    )
    parser.add_argument(
        "--pg-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="private servers, their PostgreSQL started with -c NAME=VALUE (repeatable), "
        "e.g. autovacuum=off as on a server the scheduler vacuums",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the cluster's services (repeatable), e.g. "
        "STRATUS_DISPATCH_OUTBOX=true to compare a setting in turns",
    )
    opts = parser.parse_args(argv)
    if bad := [e for e in opts.env if "=" not in e or not e.startswith("STRATUS_")]:
        parser.error(f"--env takes STRATUS_NAME=VALUE, not {bad[0]!r}")
    opts.private = opts.private or opts.statements or opts.plans is not None or bool(opts.pg_option)
    servers = PrivateServers.create(pg_options=pg_options(opts)) if opts.private else None
    try:
        if servers is not None:
            servers.start()
        return run(opts, servers)
    finally:
        if servers is not None:
            if opts.plans is not None:
                shutil.copy(servers.logs()["postgres"], PLANS)
                plans_report(PLANS)
            servers.stop()


def pg_options(opts: argparse.Namespace) -> str:
    """The private PostgreSQL's ``-c`` options: ``--pg-option``, ``--statements``, ``--plans``."""
    libraries: list[str] = []
    options: list[str] = list(opts.pg_option)
    if opts.statements:
        libraries.append("pg_stat_statements")
        options.append("pg_stat_statements.track_planning=on")
    if opts.plans is not None:
        libraries.append("auto_explain")
        options += [
            f"auto_explain.log_min_duration={opts.plans:g}ms",
            "auto_explain.log_analyze=on",
            "auto_explain.log_buffers=on",
        ]
    if libraries:
        options.insert(0, "shared_preload_libraries=" + ",".join(libraries))
    return " ".join(f"-c {o}" for o in options)


def plans_report(log: Path) -> None:
    """How many plans ``log`` holds per statement (its first words), and their median time."""
    durations: dict[str, list[float]] = {}
    text = log.read_text(errors="replace")
    for entry in re.split(r"\n(?=\S[^\n]*LOG:  duration: )", text):
        head = re.match(r"\S[^\n]*LOG:  duration: ([\d.]+) ms  plan:\s*Query Text:\s*(.*)", entry,
                        re.S)  # fmt: skip
        if head:
            statement = " ".join(head.group(2).split())[:90]
            durations.setdefault(statement, []).append(float(head.group(1)))
    print(f"plans of slow statements (auto_explain), in {log}:")
    for statement, ms in sorted(durations.items(), key=lambda kv: -sum(kv[1]))[:10]:
        print(f"    {len(ms):6d} plans, median {statistics.median(ms):7.2f} ms  {statement}")


def run(opts: argparse.Namespace, servers: PrivateServers | None) -> int:
    admin_key = "jobcost-admin-" + secrets.token_urlsafe(16)
    env = {
        **(servers.env() if servers is not None else {"STRATUS_RABBIT__VHOST": VHOST}),
        "STRATUS_POSTGRES__DATABASE": DB,
        "STRATUS_ADMIN_KEY": admin_key,
        "STRATUS_KEY_SECRET": secrets.token_urlsafe(32),
        "STRATUS_ENVIRONMENT": "bench",
        "STRATUS_DB_VACUUM": "true",
        **dict(e.split("=", 1) for e in opts.env),
    }
    drop_database(DB, env=env)
    prepare_database(DB, env=env)
    track_functions(DB, env)
    if servers is None:
        prepare_vhost(VHOST)
    cfg = ClusterConfig(
        run_dir=RUN_DIR,
        env=env,
        gateway_port=19400,
        scheduler_port=19401,
        datamover_port=19403,
        worker_base_port=19500,
        workers=1,
        python=sys.executable,
    )
    cluster = LocalCluster(cfg)
    try:
        cluster.start(timeout=120)
        print(f"job cost, {os.cpu_count()} cores, source {git_head()}")
        asyncio.run(measure(cluster, admin_key, opts, env))
    finally:
        cluster.stop()
        if servers is None:
            drop_database(DB)
            drop_vhost(VHOST)
    return 0


async def statements_report(db: asyncpg.Connection, n: int, top: int) -> None:
    """The ``top`` statements by execution and planning time since the reset, per job
    (planning is counted where ``pg_stat_statements.track_planning`` is on, as with
    ``--statements``)."""
    rows = await db.fetch(
        "SELECT calls, plans, total_exec_time, total_plan_time, rows, "
        "regexp_replace(query, '\\s+', ' ', 'g') AS q "
        "FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database "
        "WHERE datname = current_database()) "
        "ORDER BY total_exec_time + total_plan_time DESC"
    )
    total = sum(r["total_exec_time"] for r in rows)
    planning = sum(r["total_plan_time"] for r in rows)
    print(
        f"statements (pg_stat_statements): {total / n:.3f} ms of execution and "
        f"{planning / n:.3f} ms of planning per job in all"
    )
    head = f"{'ms/job':>7} {'plan ms':>7} {'calls/job':>9} {'plans':>6} {'rows/call':>9}"
    print(f"    {head}  statement")
    for r in rows[:top]:
        calls = max(1, r["calls"])
        print(
            f"    {r['total_exec_time'] / n:7.3f} {r['total_plan_time'] / n:7.3f} "
            f"{r['calls'] / n:9.2f} {r['plans'] / calls:6.2f} "
            f"{r['rows'] / calls:9.1f}  {r['q'][:130]}"
        )


def track_functions(database: str, env: dict[str, str]) -> None:
    """The database's sessions count their PL/pgSQL functions' calls and times from now on."""

    async def alter() -> None:
        conn = await asyncpg.connect(postgres_settings(env).url(driver="postgresql"))
        try:
            await conn.execute(f"ALTER DATABASE {database} SET track_functions = 'pl'")
        finally:
            await conn.close()

    asyncio.run(alter())


def git_head() -> str:
    head = ROOT / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (ROOT / ".git" / ref[5:]).read_text().strip()[:7]
        return ref[:7]
    except OSError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
