"""Benchmark of the Stratus job pipeline, each figure beside a reference measured in the same run.

    .venv/bin/python bench/pipeline.py [--quick] [--jobs N] [--clients C] [--rate R]
                                       [--duration S] [--repeat K] [--concurrency N]
                                       [--budget SECONDS] [--profile]
                                       [--only PHASE ...] [--env STRATUS_NAME=VALUE ...]

1. Gateway submissions/s: ``--jobs`` POST /v1/jobs from ``--clients`` concurrent clients, with
   the scheduler and worker programs stopped (so the figure is the gateway's, its outbox relay
   included). Reference (a): ``bench/ref_bare.py``, a bare FastAPI endpoint doing one asyncpg
   INSERT and one confirmed persistent aio-pika publish per request, under the same load.
2. End-to-end throughput: ``--jobs`` trivial ``montecarlo_pi`` jobs (samples=1000) with every
   service running, from the first submit to the last SUCCEEDED (``jobs.finished_at``, polled
   with asyncpg). Reference (b): Celery 5.7 no-op tasks on the same RabbitMQ (own vhost),
   ``celery worker -P threads -c 2``, from the first ``.delay()`` to the last task done.
   Reference (c): the least a durable job path does, from the same load generator: the bare
   endpoint of (a) and ``bench/ref_worker.py``, which claims each job (an UPDATE, committed),
   does nothing and records it (an UPDATE, committed) before acknowledging the message: three
   commits and one confirmed message a job, as Stratus's accept, claim and record, without
   anything else Stratus does (authentication, quotas, fair share, events, usage, leases).
   Beside Stratus's rate: how many jobs were in each stage on average (waiting, dispatched,
   running: Little's law over the jobs' timestamps; ``running`` below the slots means the
   slots waited for work) and the rate after the last submission, the pipeline behind the
   gateway alone.
2b. Arrays (``bench/arrays.py``): the same trivial work as arrays, one of 2,000 elements and
   20 of 100, first submit to last element SUCCEEDED, against Celery's rate of phase 2 (Celery
   enqueues one task per call; Stratus submits a sweep in one request), with the CPU time and
   PostgreSQL row writes per element.
3. Latency: ``--rate`` jobs/s offered on a steady open-loop schedule for ``--duration`` s;
   submit-to-SUCCEEDED latency from each submit's start (``time.time()``) to ``finished_at``,
   split at the job's timestamps (``created_at``, ``queued_at``, ``dispatched_at``,
   ``started_at``), with the slowest jobs and when in the run they were submitted.
4. Tracing (``bench/tracing.py``, run right after phase 2): the CPU per job of the tracing
   hooks and the log lines tracing adds, off and on (OTLP to a local receiver), and on's share
   of the CPU per job the services spent in phase 2.

Beside each figure it prints the CPU time per request / job of every process group (from
``/proc``) and what other load the machine carried, since the machine is shared. ``--budget``
bounds the measurements (330 s): repetitions that would not fit are skipped, and a batch that
runs over is cut short and says so. ``--only`` runs some phases (``gateway``, ``e2e``,
``arrays``, which needs ``e2e``, ``latency``, which then starts with a warm-up batch);
``--env`` sets a setting of the cluster's services, to compare it in turns.

Everything it starts lives on ports 19000-19200, in database and vhosts ``stratus_bench*`` and
Redis db 15, and is stopped or dropped on exit, also on error or Ctrl-C. Results are printed and
written to ``bench/results/pipeline.json``; logs stay in ``bench/results/pipeline-run/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import aio_pika
import asyncpg
import httpx
import uvloop
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo root

from bench.arrays import phase_arrays, summary_rows
from bench.cpu import CpuMeter, Roots, describe, named, per_item_ms, pids
from bench.loadgen import ClosedResult, OpenResult, closed_loop, open_loop
from bench.tracing import phase_tracing
from tools.cluster import (
    ClusterConfig,
    LocalCluster,
    drop_database,
    drop_vhost,
    prepare_database,
    prepare_vhost,
)
from tools.provision import postgres_settings, rabbit_settings
from tools.supervision import Supervisor

ROOT = Path(__file__).resolve().parent.parent
DB = VHOST = "stratus_bench"
CELERY_VHOST = "stratus_bench_celery"
GATEWAY_PORT = 19000
SCHEDULER_PORT = 19001
DATAMOVER_PORT = 19003
WORKER_BASE_PORT = 19100
REF_PORT = 19010
REDIS_URL = "redis://127.0.0.1:6379/15"  # bench-only db
REF_TABLE = "bench_ref_jobs"
REF_QUEUE = "bench.ref"
CELERY_QUEUE = "bench.celery"
SCHEDULER_QUEUE = "stratus.scheduler"  # RabbitSettings.queue_prefix + ".scheduler"
RESULTS = ROOT / "bench" / "results"
RUN_DIR = RESULTS / "pipeline-run"
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
# Seconds each phase leaves for the phases after it (see Budget).
RESERVE_AFTER_GATEWAY = 150.0
RESERVE_AFTER_E2E = 60.0
RESERVE_AFTER_LATENCY = 15.0
PHASES = ("gateway", "e2e", "arrays", "latency")
TARGETS = {
    "gateway_ratio": 0.8,
    "e2e_ratio": 0.3,
    "p50_ms": 30.0,
    "p99_ms": 100.0,
    "latency_cores": 1.0,  # of the machine's, busy while the latency phase runs (all of it)
}


# --- options ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    jobs: int
    clients: int
    rate: float
    duration: float
    repeat: int
    concurrency: int
    quick: bool
    profile: bool
    budget: float
    only: tuple[str, ...] = PHASES
    env: tuple[str, ...] = ()  # STRATUS_NAME=VALUE settings of the cluster's services


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="bench/pipeline.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--jobs", type=int, default=None, help="jobs per batch (default 2000)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    p.add_argument("--rate", type=float, default=100.0, help="latency phase jobs/s (100)")
    p.add_argument("--duration", type=float, default=None, help="latency phase seconds (10)")
    p.add_argument("--repeat", type=int, default=None, help="repetitions per figure (3)")
    p.add_argument(
        "--concurrency", type=int, default=2, help="STRATUS_CONCURRENCY of the worker (2)"
    )
    p.add_argument("--quick", action="store_true", help="300 jobs, 5 s, 1 repetition")
    p.add_argument(
        "--budget",
        type=float,
        default=330.0,
        help="time bound of the measurements in seconds (330): repetitions that would not fit "
        "are skipped and a batch that runs over is cut short (and says so)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the gateway (phase 1) and scheduler/worker (phase 2), into bench/results",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=PHASES,
        default=None,
        help="run only this phase (repeatable; default: all). The summary judges the phases "
        "run; the arrays phase alone takes its Celery reference from the end-to-end phase, so "
        "it needs --only e2e beside it",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="STRATUS_NAME=VALUE",
        help="a setting of the cluster's services (repeatable), to compare it in turns",
    )
    a = p.parse_args(argv)
    if bad := [e for e in a.env if "=" not in e or not e.startswith("STRATUS_")]:
        p.error(f"--env takes STRATUS_NAME=VALUE, not {bad[0]!r}")
    only = tuple(ph for ph in PHASES if ph in a.only) if a.only else PHASES
    if "arrays" in only and "e2e" not in only:
        p.error("--only arrays needs --only e2e too (its reference is Celery's rate there)")
    jobs = a.jobs if a.jobs is not None else (300 if a.quick else 2000)
    duration = a.duration if a.duration is not None else (5.0 if a.quick else 10.0)
    repeat = a.repeat if a.repeat is not None else (1 if a.quick else 3)
    if jobs < 1 or a.clients < 1 or a.rate <= 0 or duration <= 0 or repeat < 1:
        p.error("--jobs, --clients, --rate, --duration and --repeat must be positive")
    return Options(
        jobs, a.clients, a.rate, duration, repeat, a.concurrency, a.quick, a.profile, a.budget,
        only, tuple(a.env),
    )  # fmt: skip


# --- small helpers ------------------------------------------------------------------------


def say(line: str = "") -> None:
    print(line, flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def mark(ok: bool, value: float = 0.0) -> str:
    """``met`` / ``MISSED``; ``n/a`` when the figure could not be measured (NaN)."""
    if math.isnan(value):
        return "n/a"
    return "met" if ok else "MISSED"


class Budget:
    """The run's time bound: each phase asks how long it may take, leaving a reserve for the
    phases after it, so that a slow (or busy) machine cuts repetitions, not the run."""

    def __init__(self, total_s: float) -> None:
        self.total_s = total_s
        self.t0 = time.monotonic()

    def left(self) -> float:
        return self.total_s - (time.monotonic() - self.t0)

    def allow(self, reserve: float, floor: float, cap: float) -> float:
        """Seconds a step may take: what is left beyond ``reserve``, within [floor, cap]."""
        return max(floor, min(cap, self.left() - reserve))


class Teardown:
    """Cleanup steps, run last-in first-out on exit (error and Ctrl-C included); Ctrl-C is
    ignored while they run so that a second one cannot leave things behind."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, step: Callable[[], object]) -> None:
        self._steps.append((what, step))

    def __enter__(self) -> Teardown:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            while self._steps:
                what, step = self._steps.pop()
                try:
                    step()
                except Exception as err:
                    print(f"cleanup: {what} failed: {err!r}", file=sys.stderr, flush=True)
        finally:
            signal.signal(signal.SIGINT, previous)


class Child:
    """A subprocess of the benchmark in its own session (so that its children go with it)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._fh = log.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this benchmark created
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._fh.close()


def wait_http(url: str, child: Child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited; see {child.log}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{child.name} not ready after {timeout:.0f}s; see {child.log}")


def base_env() -> dict[str, str]:
    """The environment of our subprocesses: ours without any STRATUS_* setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("STRATUS_")}


def stratus_env(admin_key: str) -> dict[str, str]:
    return {
        "STRATUS_POSTGRES__DATABASE": DB,
        "STRATUS_RABBIT__VHOST": VHOST,
        "STRATUS_ADMIN_KEY": admin_key,
        "STRATUS_KEY_SECRET": secrets.token_urlsafe(32),
        "STRATUS_ENVIRONMENT": "bench",
        # the scheduler vacuums the churned tables where the server runs without autovacuum
        "STRATUS_DB_VACUUM": "true",
    }


def source_state() -> str:
    """The commit and the locally changed files (the tree may differ from any commit)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "shared", "services", "migrations"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
    except OSError:
        return "unknown (no git)"
    files = [line[3:] for line in changed if line.strip()]
    return f"commit {head or '?'}" + (f" + {len(files)} locally changed files" if files else "")


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"


# --- the run ------------------------------------------------------------------------------


@dataclass
class Env:
    opts: Options
    cluster: LocalCluster
    supervisor: Supervisor
    ref: Child
    ref_cmd: list[str]
    ref_env: dict[str, str]
    gateway: str
    admin: dict[str, str]
    pg_dsn: str
    amqp_url: str
    celery_amqp_url: str
    redis_key: str
    teardown: Teardown
    budget: Budget


def job_body(seq: int) -> dict[str, Any]:
    return {"kernel": "montecarlo_pi", "params": {"samples": 1000, "seed": seq & 0x7FFFFFFF}}


async def new_tenant(env: Env, name: str) -> tuple[str, dict[str, str]]:
    async with httpx.AsyncClient(base_url=env.gateway, headers=env.admin, timeout=30) as api:
        # The default rate limit (200 requests/s) would cap the figures being measured: the
        # bench tenant gets one well above what the load generator can offer, and room for a
        # whole batch in its queue.
        body = {
            "name": f"{name}-{time.time_ns()}",
            "quotas": {"requests_per_second": 100_000, "max_queued_jobs": 100_000},
        }
        r = await api.post("/v1/tenants", json=body)
        r.raise_for_status()
        tenant_id = str(r.json()["id"])
        k = await api.post(f"/v1/tenants/{tenant_id}/keys", json={"name": "bench"})
        k.raise_for_status()
    return tenant_id, {"Authorization": f"Bearer {k.json()['key']}"}


async def purge(amqp_url: str, queue: str) -> int:
    conn = await aio_pika.connect(amqp_url)
    try:
        channel = await conn.channel()
        q = await channel.get_queue(queue, ensure=True)
        purged = await q.purge()
        return int(getattr(purged, "message_count", 0) or 0)
    finally:
        await conn.close()


async def wait_outbox_empty(db: asyncpg.Connection, timeout: float = 60.0) -> float:
    """Seconds until the outbox is empty (the relays published everything)."""
    t0 = time.perf_counter()
    while True:
        if await db.fetchval("SELECT count(*) FROM outbox") == 0:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"outbox not drained after {timeout:.0f}s")
        await asyncio.sleep(0.02)


@dataclass
class Done:
    succeeded: int
    failed: int
    last_finished: float | None  # time.time() of the last final state
    timed_out: bool
    polls: int  # queries this poll made (each one transaction in the database's counters)


async def wait_final(
    db: asyncpg.Connection, query: str, args: tuple[Any, ...], expected: int, timeout: float
) -> Done:
    """Poll ``query`` (its row: the succeeded, the failed and the last ``finished_at``) until
    ``expected`` are final (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        row = await db.fetchrow(query, *args)
        polls += 1
        assert row is not None
        ok, bad, last = int(row[0]), int(row[1]), row[2]
        done = ok + bad >= expected
        if done or time.monotonic() > deadline:
            return Done(ok, bad, last.timestamp() if last else None, not done, polls)
        await asyncio.sleep(0.05)


async def wait_done(db: asyncpg.Connection, tenant_id: str, expected: int, timeout: float) -> Done:
    """Poll ``jobs`` until ``expected`` jobs of the tenant are final (or ``timeout``)."""
    query = """
        SELECT count(*) FILTER (WHERE state = 'SUCCEEDED'),
               count(*) FILTER (WHERE state = ANY($2::text[]) AND state <> 'SUCCEEDED'),
               max(finished_at)
        FROM jobs WHERE tenant_id = $1::uuid
    """
    return await wait_final(db, query, (tenant_id, list(FINAL_STATES)), expected, timeout)


DB_COUNTERS = """
    SELECT xact_commit + xact_rollback AS transactions, tup_inserted AS rows_inserted,
           tup_updated AS rows_updated, tup_deleted AS rows_deleted
    FROM pg_stat_database WHERE datname = current_database()
"""


async def db_counters(db: asyncpg.Connection) -> dict[str, int]:
    """The database's cumulative counters (PostgreSQL publishes them with up to ~1 s delay)."""
    row = await db.fetchrow(DB_COUNTERS)
    assert row is not None
    return {k: int(v) for k, v in row.items()}


async def cut_short(db: asyncpg.Connection, tenant_id: str) -> int:
    """Cancel a timed-out batch's jobs that have not started, so that they do not load the next
    phase (bench hygiene, done in the database: no Stratus event is needed for them, and late
    messages about them are no-ops)."""
    status = await db.execute(
        "UPDATE jobs SET state = 'CANCELLED', state_reason = 'bench: time bound', "
        "finished_at = now(), updated_at = now() "
        "WHERE tenant_id = $1::uuid AND state IN ('PENDING', 'QUEUED')",
        tenant_id,
    )
    await asyncio.sleep(2.0)  # let running ones finish
    return int(status.split()[-1])


def stop_programs(env: Env, *programs: str) -> None:
    for program in programs:
        for name in env.cluster.members(program):
            env.supervisor.stop(env.cluster.namespec(name))


def start_programs(env: Env, *programs: str) -> None:
    for program in programs:
        env.cluster.restart(program, timeout=90)


class Profiler:
    """py-spy record of some processes while a block runs (raw collapsed stacks)."""

    def __init__(self, env: Env, targets: dict[str, int], enabled: bool) -> None:
        self.children: list[Child] = []
        self.outputs: list[Path] = []
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy"
        )
        if enabled and exe is None:
            say("    (--profile: py-spy is not installed; .venv/bin/pip install py-spy)")
        if not enabled or exe is None:
            return
        for name, pid in targets.items():
            out = RESULTS / f"profile-{name}.txt"
            cmd = [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
            cmd += ["--nonblocking", "--output", str(out)]
            self.children.append(Child(f"py-spy {name}", cmd, base_env(), RUN_DIR / f"{name}.spy"))
            self.outputs.append(out)
        time.sleep(0.5)  # let it attach

    def stop(self) -> list[str]:
        for child in self.children:
            if child.alive():
                child.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(15)
            child.stop()
        return [str(p) for p in self.outputs if p.exists()]


def describe_closed(r: ClosedResult) -> str:
    errors = {k: v for k, v in r.statuses.items() if k not in (200, 201)}
    extra = f", errors {dict(errors)}, e.g. {r.errors[0]}" if errors and r.errors else ""
    cut = "; CUT SHORT at the time bound" if r.cut_short else ""
    return f"{r.rate:7.1f}/s ({r.ok}/{r.requests} in {r.elapsed_s:.2f} s{extra}{cut})"


def servers() -> dict[str, Roots]:
    return {
        "PostgreSQL (all)": named("postgres"),
        "RabbitMQ": named("beam.smp"),
        "load generator": pids(os.getpid()),
    }


def stratus_meter(env: Env, *programs: str) -> CpuMeter:
    groups = {p: pids(*env.cluster.pids(p)) for p in programs} | servers()
    return CpuMeter(groups, flat={"load generator"})


def median_cpu(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for run in runs for k in run}
    return {k: median([run.get(k, 0.0) for run in runs]) for k in sorted(keys)}


async def phase_gateway(env: Env, db: asyncpg.Connection) -> dict[str, Any]:
    o = env.opts
    say()
    say(
        f"[1] Gateway submissions: {o.jobs} x POST /v1/jobs from {o.clients} clients, "
        f"{o.repeat} repetition(s), alternating with the reference"
    )
    say(
        "    scheduler and worker programs STOPPED (supervisord), so the figure is the "
        "gateway's alone (a submission's wake-up of the scheduler is a NOTIFY in its commit)"
    )
    say(
        "    reference (a): bench/ref_bare.py, FastAPI + uvicorn (uvloop, httptools), 1 process: "
        "one asyncpg INSERT + one confirmed persistent aio-pika publish to a durable quorum "
        "queue, no auth"
    )
    say("    CPU per request: each process group's CPU time in the run / requests")
    await asyncio.to_thread(stop_programs, env, "scheduler", "worker")
    tenant_id, headers = await new_tenant(env, "bench-gateway")
    ref_url = f"http://127.0.0.1:{REF_PORT}"
    stratus: list[ClosedResult] = []
    ref: list[ClosedResult] = []
    stratus_cpu: list[dict[str, float]] = []
    ref_cpu: list[dict[str, float]] = []
    drains: list[float] = []
    profiles: list[str] = []
    rep_s = 0.0
    for rep in range(o.repeat):
        if rep > 0 and env.budget.left() - rep_s < RESERVE_AFTER_GATEWAY:
            say(f"    (stopping after {rep} repetition(s): another would not fit the time bound)")
            break
        rep_t0 = time.monotonic()
        limit = env.budget.allow(RESERVE_AFTER_GATEWAY, 10.0, 2 * 60.0) / 2
        order = ("ref", "stratus") if rep % 2 == 0 else ("stratus", "ref")
        for which in order:
            if which == "ref":
                meter = CpuMeter(
                    {"reference": pids(env.ref.proc.pid)} | servers(), flat={"load generator"}
                )
                r = await closed_loop(
                    ref_url, "/v1/jobs", {}, job_body, requests=o.jobs, clients=o.clients,
                    warmup=2, on_start=meter.start, time_limit_s=limit,
                )  # fmt: skip
                cpu = meter.stop()
                ref.append(r)
                ref_cpu.append(per_item_ms(cpu, r.ok))
                await purge(env.amqp_url, REF_QUEUE)
                say(f"    rep {rep + 1} reference (a):   {describe_closed(r)}")
                say(f"          CPU per request: {describe(cpu, r.ok, r.elapsed_s)}")
            else:
                last = rep == o.repeat - 1
                prof = Profiler(
                    env, {"gateway": env.cluster.pids("gateway")[0]}, o.profile and last
                )
                meter = stratus_meter(env, "gateway")
                r = await closed_loop(
                    env.gateway, "/v1/jobs", headers, job_body, requests=o.jobs,
                    clients=o.clients, warmup=2, on_start=meter.start, time_limit_s=limit,
                )  # fmt: skip
                drain = await wait_outbox_empty(db)
                cpu = meter.stop()  # the relay's publishing after the last 201 included
                profiles += prof.stop()
                stratus.append(r)
                stratus_cpu.append(per_item_ms(cpu, r.ok))
                drains.append(drain)
                say(
                    f"    rep {rep + 1} Stratus gateway: {describe_closed(r)}; "
                    f"outbox empty {drain * 1000:.0f} ms after the last 201"
                )
                say(f"          CPU per request: {describe(cpu, r.ok, r.elapsed_s + drain)}")
        rep_s = time.monotonic() - rep_t0
    # Clean slate for phase 2: drop whatever waits on the scheduler's queue and phase 1's jobs.
    await wait_outbox_empty(db)
    purged = await purge(env.amqp_url, SCHEDULER_QUEUE)
    deleted = await db.execute("DELETE FROM jobs WHERE tenant_id = $1::uuid", tenant_id)
    say(
        f"    cleanup: purged {purged} scheduler messages and deleted "
        f"{deleted.split()[-1]} phase-1 jobs; scheduler and worker started again"
    )
    await asyncio.to_thread(start_programs, env, "scheduler", "worker")
    env.ref.stop()  # not needed any more: free its memory and connections
    s_med, r_med = median([r.rate for r in stratus]), median([r.rate for r in ref])
    q = ratio(s_med, r_med)
    paired = median([ratio(a.rate, b.rate) for a, b in zip(stratus, ref, strict=False)])
    s_cpu, r_cpu = median_cpu(stratus_cpu), median_cpu(ref_cpu)
    say(
        f"  => median Stratus gateway {s_med:.1f} submissions/s; reference (a) {r_med:.1f}/s; "
        f"ratio {q:.2f} (target >= {TARGETS['gateway_ratio']}: "
        f"{mark(q >= TARGETS['gateway_ratio'], q)}); median of the per-repetition ratios "
        f"{paired:.2f}"
    )
    say(
        f"     median CPU per request: gateway {s_cpu.get('gateway', math.nan):.2f} ms vs "
        f"reference {r_cpu.get('reference', math.nan):.2f} ms; PostgreSQL "
        f"{s_cpu.get('PostgreSQL (all)', math.nan):.2f} vs "
        f"{r_cpu.get('PostgreSQL (all)', math.nan):.2f} ms; load generator "
        f"{s_cpu.get('load generator', math.nan):.2f} vs "
        f"{r_cpu.get('load generator', math.nan):.2f} ms"
    )
    return {
        "setup": "scheduler+worker stopped; 1 gateway; same aiohttp load generator",
        "stratus_per_s": [r.rate for r in stratus],
        "reference_per_s": [r.rate for r in ref],
        "stratus_errors": [dict(r.statuses) for r in stratus],
        "outbox_empty_after_last_s": drains,
        "stratus_cpu_ms_per_request": stratus_cpu,
        "reference_cpu_ms_per_request": ref_cpu,
        "stratus_median_per_s": s_med,
        "reference_median_per_s": r_med,
        "ratio": q,
        "paired_ratio_median": paired,
        "target": TARGETS["gateway_ratio"],
        "profiles": profiles,
    }


async def stratus_batch(
    env: Env, db: asyncpg.Connection, name: str, jobs: int, limit_s: float, profile: bool = False
) -> dict[str, Any]:
    """Submit ``jobs`` from the clients and wait until all are final, within ``limit_s`` in all
    (past it, no new submit starts and the jobs not started yet are cancelled)."""
    o = env.opts
    tenant_id, headers = await new_tenant(env, name)
    targets: dict[str, int] = {}
    if profile:
        targets = {p: env.cluster.pids(p)[0] for p in ("scheduler", "worker", "gateway")}
    prof = Profiler(env, targets, profile)
    meter = stratus_meter(env, "gateway", "scheduler", "worker")
    counters0 = await db_counters(db)
    sub = await closed_loop(
        env.gateway, "/v1/jobs", headers, job_body, requests=jobs, clients=o.clients,
        on_start=meter.start, time_limit_s=limit_s,
    )  # fmt: skip
    submitted_at = time.time()
    done = await wait_done(db, tenant_id, sub.ok, max(5.0, limit_s - sub.elapsed_s))
    cpu = meter.stop()
    profiles = prof.stop()
    stages = await occupancy(db, tenant_id)
    await asyncio.sleep(1.2)  # let the servers' backends publish their statistics
    counters1 = await db_counters(db)
    cancelled = await cut_short(db, tenant_id) if done.timed_out else 0
    end = done.last_finished or time.time()
    elapsed = end - sub.first_start
    work = {k: counters1[k] - counters0[k] for k in counters0}
    work["transactions"] -= done.polls + 1  # the benchmark's own queries
    per_job = {k: v / done.succeeded for k, v in work.items()} if done.succeeded else {}
    return {
        "submitted": sub.ok,
        "submit_errors": {str(k): v for k, v in sub.statuses.items() if k not in (200, 201)},
        "submit_error_examples": sub.errors,
        "submit_s": sub.elapsed_s,
        "succeeded": done.succeeded,
        "failed": done.failed,
        "timed_out": done.timed_out,
        "cut_short": sub.cut_short or done.timed_out,
        "cancelled_at_time_bound": cancelled,
        "elapsed_s": elapsed,
        "drain_after_submit_s": end - submitted_at,
        "per_s": done.succeeded / elapsed if elapsed > 0 else math.nan,
        "cpu_ms_per_job": per_item_ms(cpu, done.succeeded),
        "cpu": describe(cpu, done.succeeded, elapsed),
        "db_per_job": per_job,
        "profiles": profiles,
        "occupancy": stages,
    }


# The stages of a job between its row and its record, by the job's own timestamps.
STAGES = (
    ("waiting", "queued_at", "dispatched_at"),
    ("dispatched", "dispatched_at", "started_at"),
    ("running", "started_at", "finished_at"),
)


async def occupancy(db: asyncpg.Connection, tenant_id: str) -> dict[str, dict[str, float]]:
    """Per stage of the tenant's SUCCEEDED jobs: how many were in it on average between the
    first row and the last record (Little's law: the stage's summed time over the span), and
    its median in ms. With every slot busy, ``running`` is at least the worker's slot count;
    less than that, the slots waited for something other than the CPU. And ``drain``: the
    jobs recorded after the last row was written, over that time, the rate of the pipeline
    behind the gateway with the gateway idle."""
    rows = await db.fetch(
        "SELECT created_at, queued_at, dispatched_at, started_at, finished_at FROM jobs "
        "WHERE tenant_id = $1::uuid AND state = 'SUCCEEDED'",
        tenant_id,
    )
    if not rows:
        return {}
    first_row = min(r["queued_at"] for r in rows)
    last_row = max(r["created_at"] for r in rows)
    last_record = max(r["finished_at"] for r in rows)
    span_s = (last_record - first_row).total_seconds() or math.nan
    stages: dict[str, dict[str, float]] = {}
    for name, begin, end in STAGES:
        spent = [(r[end] - r[begin]).total_seconds() for r in rows]
        stages[name] = {"mean_jobs": sum(spent) / span_s, "p50_ms": pct(spent, 50) * 1000}
    drained = sum(1 for r in rows if r["finished_at"] > last_row)
    drain_s = (last_record - last_row).total_seconds()
    stages["drain"] = {
        "jobs": drained,
        "s": drain_s,
        "per_s": drained / drain_s if drain_s > 0 else math.nan,
    }
    return stages


def describe_occupancy(stages: dict[str, dict[str, float]]) -> str:
    drain = stages["drain"]
    return (
        ", ".join(
            f"{name} {stages[name]['mean_jobs']:.1f} jobs (p50 {stages[name]['p50_ms']:.1f} ms)"
            for name, _, _ in STAGES
        )
        + f"; after the last row {drain['jobs']:.0f} jobs in {drain['s']:.2f} s "
        f"({drain['per_s']:.0f}/s)"
    )


def celery_worker(env: Env) -> Child:
    cenv = base_env() | {
        "PYTHONPATH": str(ROOT),
        "BENCH_CELERY_BROKER": env.celery_amqp_url,
        "BENCH_REDIS_URL": REDIS_URL,
        "BENCH_REDIS_KEY": env.redis_key,
        "BENCH_CELERY_QUEUE": CELERY_QUEUE,
    }
    cmd = [sys.executable, "-m", "celery", "-A", "bench.celery_ref", "worker"]
    cmd += ["-P", "threads", "-c", "2", "--without-gossip", "--without-mingle"]
    cmd += ["--without-heartbeat", "-Q", CELERY_QUEUE, "--loglevel", "WARNING"]
    cmd += ["-n", f"bench-{os.getpid()}@%h"]
    return Child("celery worker", cmd, cenv, RUN_DIR / "celery.log")


def celery_batch(env: Env, n: int, timeout: float, worker: Child) -> dict[str, Any]:
    """``n`` x ``noop.delay()`` from one thread, then wait until the Redis count reaches ``n``."""
    from bench import celery_ref

    celery_ref.app.conf.broker_url = env.celery_amqp_url
    redis = Redis.from_url(REDIS_URL)
    count_key, last_key = celery_ref.count_key(env.redis_key), celery_ref.last_key(env.redis_key)
    meter = CpuMeter(
        {
            "celery worker": pids(worker.proc.pid),
            "RabbitMQ": named("beam.smp"),
            "Redis": named("redis-server"),
            "producer": pids(os.getpid()),
        },
        flat={"producer"},
    )
    try:
        redis.delete(count_key, last_key)
        meter.start()
        t0 = time.time()
        for i in range(n):
            celery_ref.noop.delay(i)
        sent = time.time()
        deadline = time.monotonic() + timeout
        count = 0
        while time.monotonic() < deadline:
            count = int(redis.get(count_key) or 0)
            if count >= n:
                break
            time.sleep(0.005)
        cpu = meter.stop()
        last = redis.zscore(last_key, "t")
        end = float(last) if last is not None else time.time()
        return {
            "tasks": count,
            "timed_out": count < n,
            "elapsed_s": end - t0,
            "delay_per_s": n / (sent - t0) if sent > t0 else math.nan,
            "per_s": count / (end - t0) if end > t0 else math.nan,
            "cpu_ms_per_task": per_item_ms(cpu, count),
            "cpu": describe(cpu, count, end - t0),
        }
    finally:
        redis.delete(count_key, last_key)
        redis.close()


async def phase_e2e(env: Env, db: asyncpg.Connection) -> dict[str, Any]:
    o = env.opts
    say()
    say(
        f"[2] End-to-end throughput: {o.jobs} montecarlo_pi jobs (samples=1000) from "
        f"{o.clients} clients, everything running; first submit -> last SUCCEEDED "
        f"(jobs.finished_at), {o.repeat} repetition(s)"
    )
    say(
        f"    reference (b): Celery 5.7 no-op tasks, same RabbitMQ (vhost {CELERY_VHOST}), "
        "worker -P threads -c 2 --without-gossip --without-mingle --without-heartbeat, default "
        "config (no publisher confirms, early ack, no result backend; each task INCRs Redis); "
        "one producer thread; first .delay() -> last task done"
    )
    warm = await stratus_batch(env, db, "bench-warm", 2 * o.clients, limit_s=60)
    say(
        f"    warm-up: {warm['succeeded']}/{warm['submitted']} jobs SUCCEEDED "
        f"in {warm['elapsed_s']:.2f} s"
    )
    stratus: list[dict[str, Any]] = []
    reserve = RESERVE_AFTER_E2E + 20.0  # the Celery reference
    for rep in range(o.repeat):
        if rep > 0 and env.budget.left() - stratus[-1]["elapsed_s"] - 5 < reserve:
            say(
                f"    (stopping after {rep} Stratus repetition(s): another would not fit the "
                "time bound)"
            )
            break
        limit = env.budget.allow(reserve, 20.0, 150.0)
        r = await stratus_batch(
            env, db, f"bench-e2e-{rep}", o.jobs, limit, profile=o.profile and rep == 0
        )
        stratus.append(r)
        say(
            f"    rep {rep + 1} Stratus: {r['per_s']:7.1f} jobs/s ({r['succeeded']} SUCCEEDED, "
            f"{r['failed']} failed of {r['submitted']} in {r['elapsed_s']:.2f} s; submitting "
            f"took {r['submit_s']:.2f} s, the last job finished {r['drain_after_submit_s']:.2f} s "
            f"after the last 201)"
        )
        if r["cut_short"]:
            say(
                f"          CUT SHORT at the time bound ({limit:.0f} s): the rate is over the "
                f"jobs done by then; {r['cancelled_at_time_bound']} unstarted jobs cancelled"
            )
        if r["submit_errors"]:
            examples = r["submit_error_examples"][:1]
            say(f"          submit errors {r['submit_errors']}, e.g. {examples}")
        say(f"          CPU per job: {r['cpu']}")
        if r["occupancy"]:
            say(f"          jobs in each stage on average: {describe_occupancy(r['occupancy'])}")
        if r["db_per_job"]:
            say(
                "          PostgreSQL work per job (approx.): "
                + ", ".join(f"{v:.1f} {k.replace('_', ' ')}" for k, v in r["db_per_job"].items())
            )
        if r["cut_short"]:
            break

    celery: list[dict[str, Any]] = []
    if importlib.util.find_spec("celery") is None:
        say(
            "    reference (b) SKIPPED: celery is not installed "
            "(.venv/bin/pip install celery==5.7.0, or the project's bench extra)"
        )
    else:
        await run_celery(env, celery)
    durable = await run_durable_ref(env, db)
    s_med = median([r["per_s"] for r in stratus])
    c_med = median([c["per_s"] for c in celery])
    d_med = median([d["per_s"] for d in durable])
    q = ratio(s_med, c_med)
    say(
        f"  => median Stratus {s_med:.1f} jobs/s; Celery {c_med:.1f} tasks/s; ratio {q:.2f} "
        f"(target >= {TARGETS['e2e_ratio']}: {mark(q >= TARGETS['e2e_ratio'], q)})"
    )
    say(
        f"     reference (c), the bare durable path: {d_med:.1f} jobs/s, "
        f"{ratio(d_med, c_med):.2f}x Celery; Stratus {ratio(s_med, d_med):.2f}x of it"
    )
    return {
        "setup": f"1 gateway, 1 scheduler, 1 worker process (STRATUS_CONCURRENCY={o.concurrency})",
        "stratus": stratus,
        "celery": celery,
        "stratus_median_per_s": s_med,
        "celery_median_per_s": c_med,
        "ratio": q,
        "target": TARGETS["e2e_ratio"],
        "durable_reference": durable,
        "durable_median_per_s": d_med,
        "durable_ratio_to_celery": ratio(d_med, c_med),
        "stratus_ratio_to_durable": ratio(s_med, d_med),
    }


async def run_durable_ref(env: Env, db: asyncpg.Connection) -> list[dict[str, Any]]:
    """Reference (c): the bare endpoint of (a) with ``bench/ref_worker.py`` consuming its queue
    (claim and record, a commit each, per job), from the same load generator; first submit ->
    last ``finished_at``, ``repeat`` times."""
    o = env.opts
    say(
        "    reference (c), the least a durable job path does: bench/ref_bare.py (one INSERT, one "
        "confirmed publish) + bench/ref_worker.py (per message: claim UPDATE, commit; no-op; "
        "record UPDATE, commit; ack), same load generator; first submit -> last finished_at"
    )
    server = Child("reference (c) uvicorn", env.ref_cmd, env.ref_env, RUN_DIR / "ref_bare_c.log")
    worker = Child(
        "reference (c) worker",
        [sys.executable, "-m", "bench.ref_worker"],
        env.ref_env | {"PYTHONPATH": str(ROOT)},
        RUN_DIR / "ref_worker.log",
    )
    env.teardown.add("reference (c) server", server.stop)
    env.teardown.add("reference (c) worker", worker.stop)
    results: list[dict[str, Any]] = []
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{REF_PORT}/healthz", server)
        await wait_log(worker, "ready", timeout=30.0)
        for rep in range(o.repeat):
            if env.budget.left() < RESERVE_AFTER_E2E:
                say(f"    (stopping reference (c) after {rep} repetition(s): time bound)")
                break
            await db.execute(f"TRUNCATE {REF_TABLE}")
            meter = CpuMeter(
                {
                    "reference": pids(server.proc.pid),
                    "reference worker": pids(worker.proc.pid),
                }
                | servers(),
                flat={"load generator"},
            )
            sub = await closed_loop(
                f"http://127.0.0.1:{REF_PORT}", "/v1/jobs", {}, job_body, requests=o.jobs,
                clients=o.clients, warmup=2, on_start=meter.start, time_limit_s=60.0,
            )  # fmt: skip
            expected = sub.ok + 2 * o.clients  # the warm-up's jobs too
            ref_done = await wait_final(
                db,
                f"SELECT count(*) FILTER (WHERE state = 'SUCCEEDED'), 0, "  # noqa: S608
                f"max(finished_at) FROM {REF_TABLE}",
                (),
                expected,
                60.0,
            )
            cpu = meter.stop()
            n = ref_done.succeeded - 2 * o.clients
            end = ref_done.last_finished or time.time()
            elapsed = end - sub.first_start
            r = {
                "submitted": sub.ok,
                "succeeded": n,
                "timed_out": ref_done.timed_out,
                "elapsed_s": elapsed,
                "per_s": n / elapsed if elapsed > 0 else math.nan,
                "cpu_ms_per_job": per_item_ms(cpu, n),
                "cpu": describe(cpu, n, elapsed),
            }
            results.append(r)
            say(
                f"    rep {rep + 1} reference (c): {r['per_s']:7.1f} jobs/s ({n} SUCCEEDED of "
                f"{sub.ok} in {elapsed:.2f} s{'; TIMED OUT' if r['timed_out'] else ''})"
            )
            say(f"          CPU per job: {r['cpu']}")
        await purge(env.amqp_url, REF_QUEUE)
    finally:
        await asyncio.to_thread(worker.stop)
        await asyncio.to_thread(server.stop)
    return results


async def wait_log(child: Child, text: str, timeout: float) -> None:
    """Wait until ``child``'s log holds ``text`` (it says it is ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.log.exists() and text in child.log.read_text(errors="replace"):
            return
        if not child.alive():
            raise RuntimeError(f"{child.name} exited; see {child.log}")
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{child.name} not ready in {timeout:.0f} s; see {child.log}")


async def run_celery(env: Env, celery: list[dict[str, Any]]) -> None:
    o = env.opts
    worker = celery_worker(env)
    env.teardown.add("celery worker", worker.stop)
    try:
        warm_c = await asyncio.to_thread(celery_batch, env, 2 * o.clients, 60.0, worker)
        if warm_c["timed_out"]:
            raise RuntimeError(f"celery worker did not run the warm-up; see {worker.log}")
        for rep in range(o.repeat):
            if rep > 0 and env.budget.left() < RESERVE_AFTER_E2E + 5:
                say(f"    (stopping Celery after {rep} repetition(s): time bound)")
                break
            c = await asyncio.to_thread(celery_batch, env, o.jobs, 60.0, worker)
            celery.append(c)
            say(
                f"    rep {rep + 1} Celery:  {c['per_s']:7.1f} tasks/s ({c['tasks']} done in "
                f"{c['elapsed_s']:.2f} s; .delay() {c['delay_per_s']:.0f}/s"
                f"{'; TIMED OUT' if c['timed_out'] else ''})"
            )
            say(f"          CPU per task: {c['cpu']}")
    finally:
        await asyncio.to_thread(worker.stop)


SEGMENTS = (
    ("submit_to_created", "submit->row"),
    ("created_to_queued", "row->QUEUED"),
    ("queued_to_dispatched", "QUEUED->dispatched"),
    ("dispatched_to_started", "dispatched->RUNNING"),
    ("started_to_finished", "RUNNING->SUCCEEDED"),
)


def _segments(rows: list[asyncpg.Record], starts: dict[str, float]) -> dict[str, list[float]]:
    seg: dict[str, list[float]] = {"total": [], **{k: [] for k, _ in SEGMENTS}}
    for row in rows:
        start = starts.get(str(row["id"]))
        if start is None or row["state"] != "SUCCEEDED" or row["finished_at"] is None:
            continue
        c, q, d, s, f = (
            row[k].timestamp()
            for k in ("created_at", "queued_at", "dispatched_at", "started_at", "finished_at")
        )
        seg["total"].append((f - start) * 1000)
        seg["submit_to_created"].append((c - start) * 1000)
        seg["created_to_queued"].append((q - c) * 1000)
        seg["queued_to_dispatched"].append((d - q) * 1000)
        seg["dispatched_to_started"].append((s - d) * 1000)
        seg["started_to_finished"].append((f - s) * 1000)
    return seg


async def latency_run(
    env: Env, db: asyncpg.Connection, rate: float, duration: float, wait_s: float
) -> dict[str, Any]:
    """Offer ``rate`` jobs/s for ``duration`` s, then wait up to ``wait_s`` for them. Jobs not
    SUCCEEDED by then count with their wait so far (a lower bound), not as absent."""
    tenant_id, headers = await new_tenant(env, f"bench-latency-{rate:g}")
    meter = stratus_meter(env, "gateway", "scheduler", "worker")
    res: OpenResult = await open_loop(
        env.gateway, "/v1/jobs", headers, job_body,
        rate=rate, duration_s=duration, on_start=meter.start,
    )  # fmt: skip
    starts = {s.job_id: s.start for s in res.sent if s.job_id}
    done = await wait_done(db, tenant_id, len(starts), timeout=wait_s)
    cpu = meter.stop()
    cut_at = time.time()
    cancelled = await cut_short(db, tenant_id) if done.timed_out else 0
    rows = await db.fetch(
        "SELECT id, state, created_at, queued_at, dispatched_at, started_at, finished_at "
        "FROM jobs "
        "WHERE tenant_id = $1::uuid",
        tenant_id,
    )
    seg = _segments(rows, starts)
    span_s = (done.last_finished or time.time()) - res.sent[0].start if res.sent else 0.0
    unfinished = [(cut_at - starts[str(r["id"])]) * 1000 for r in rows
                  if str(r["id"]) in starts and r["state"] != "SUCCEEDED"]  # fmt: skip
    lat = seg["total"] + unfinished
    answers = [(s.end - s.start) * 1000 for s in res.sent if s.job_id]
    end = done.last_finished or time.time()
    return {
        "rate": rate,
        "duration_s": duration,
        "offered": len(res.sent),
        "succeeded": done.succeeded,
        "failed": done.failed,
        "timed_out": done.timed_out,
        "not_succeeded_counted_as_lower_bound": len(unfinished),
        "cancelled_at_time_bound": cancelled,
        "submit_errors": {str(k): v for k, v in res.statuses.items() if k not in (200, 201)},
        "submit_error_examples": res.errors,
        "generator_lag_max_ms": res.lag_max_s * 1000,
        "schedule_s": res.elapsed_s,
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "max_ms": max(lat) if lat else math.nan,
        "http_p50_ms": pct(answers, 50),
        "http_p99_ms": pct(answers, 99),
        "breakdown_ms": {k: {"p50": pct(seg[k], 50), "p99": pct(seg[k], 99)} for k, _ in SEGMENTS},
        "cpu_ms_per_job": per_item_ms(cpu, done.succeeded),
        "cpu": describe(cpu, done.succeeded, end - res.sent[0].start if res.sent else 0.0),
        "cores_busy": cpu.get("machine", 0.0) / span_s if span_s > 0 else math.nan,
        "jobs": len(lat),
        "started_at": res.sent[0].start if res.sent else math.nan,
        "slowest": _slowest(rows, starts, res.sent[0].start if res.sent else 0.0),
    }


def _slowest(
    rows: list[asyncpg.Record], starts: dict[str, float], t0: float, n: int = 8
) -> list[tuple[float, float]]:
    """The ``n`` slowest SUCCEEDED jobs as (seconds into the run at submit, ms to SUCCEEDED):
    whether the tail is spread out or one stall."""
    done = [
        (starts[str(r["id"])] - t0, (r["finished_at"].timestamp() - starts[str(r["id"])]) * 1000)
        for r in rows
        if str(r["id"]) in starts and r["state"] == "SUCCEEDED" and r["finished_at"] is not None
    ]
    return sorted(done, key=lambda d: -d[1])[:n]


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) if not math.isnan(t) else "?"


def describe_latency(r: dict[str, Any]) -> list[str]:
    errors = r["submit_errors"]
    return [
        f"offered {r['offered']} submits (schedule and answers took {r['schedule_s']:.2f} s, "
        f"generator lag max {r['generator_lag_max_ms']:.1f} ms); {r['succeeded']} SUCCEEDED, "
        f"{r['failed']} failed{', submit errors ' + str(errors) if errors else ''}"
        + (
            f"; CUT SHORT at the time bound: {r['not_succeeded_counted_as_lower_bound']} jobs "
            "not SUCCEEDED count with their wait so far (a lower bound)"
            if r["timed_out"]
            else ""
        ),
        f"submit-to-SUCCEEDED p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
        f"max {r['max_ms']:.1f} ms; the POST's own answer p50 {r['http_p50_ms']:.1f} ms, "
        f"p99 {r['http_p99_ms']:.1f} ms",
        "where it goes (p50 / p99 ms): "
        + "; ".join(
            f"{label} {r['breakdown_ms'][k]['p50']:.1f} / {r['breakdown_ms'][k]['p99']:.1f}"
            for k, label in SEGMENTS
        ),
        f"CPU per job: {r['cpu']}",
        f"slowest (s into the run, which began {clock(r['started_at'])} UTC: ms): "
        + ", ".join(f"{at:.2f}: {ms:.0f}" for at, ms in r["slowest"]),
    ] + [f"error example: {e}" for e in r["submit_error_examples"][:2]]


async def phase_latency(env: Env, db: asyncpg.Connection) -> dict[str, Any]:
    o = env.opts
    say()
    say(
        f"[3] Latency: {o.rate:g} jobs/s offered on a steady open-loop schedule for "
        f"{o.duration:g} s (up to 64 connections), everything running; from each submit's start "
        "(time.time()) to the job's finished_at"
    )
    wait = env.budget.allow(RESERVE_AFTER_LATENCY + o.duration, 10.0, 90.0)
    main = await latency_run(env, db, o.rate, o.duration, wait)
    for line in describe_latency(main):
        say("    " + line)
    p50, p99, cores = main["p50_ms"], main["p99_ms"], main["cores_busy"]
    say(
        f"  => submit-to-SUCCEEDED p50 {p50:.1f} ms (target < {TARGETS['p50_ms']:g}: "
        f"{mark(p50 < TARGETS['p50_ms'], p50)}), p99 {p99:.1f} ms (target < "
        f"{TARGETS['p99_ms']:g}: {mark(p99 < TARGETS['p99_ms'], p99)}), over {main['jobs']} jobs; "
        f"{cores:.2f} cores busy (target <= {TARGETS['latency_cores']:g}: "
        f"{mark(cores <= TARGETS['latency_cores'], cores)})"
    )
    probe_rate, probe_s = max(1.0, o.rate / 10), min(o.duration, 5.0)
    probe: dict[str, Any] | None = None
    if env.budget.left() > probe_s + 10:
        say(
            f"    diagnostic, not a target: the same at {probe_rate:g} jobs/s for {probe_s:g} s "
            "(the path's latency without a queue)"
        )
        probe = await latency_run(env, db, probe_rate, probe_s, env.budget.allow(0, 5.0, 20.0))
        for line in describe_latency(probe):
            say("      " + line)
    return {
        **main,
        "setup": f"open loop {o.rate:g}/s for {o.duration:g} s, 64 connections",
        "targets_ms": {"p50": TARGETS["p50_ms"], "p99": TARGETS["p99_ms"]},
        "probe": probe,
    }


async def run_phases(env: Env) -> dict[str, Any]:
    db = await asyncpg.connect(env.pg_dsn)
    try:
        results: dict[str, Any] = {}
        only = env.opts.only
        if "gateway" in only:
            results["gateway"] = await phase_gateway(env, db)
        if "e2e" in only:
            results["e2e"] = await phase_e2e(env, db)
            results["tracing"] = phase_tracing(results["e2e"]["stratus"])  # beside [2]'s CPU
        if "arrays" in only:
            celery_rate = results["e2e"]["celery_median_per_s"]
            results["arrays"] = await phase_arrays(env, db, celery_rate)
        if "latency" in only:
            if "e2e" not in only:  # imports, the kernel's JIT, prepared plans
                await stratus_batch(env, db, "bench-warm", 2 * env.opts.clients, limit_s=60)
            results["latency"] = await phase_latency(env, db)
        return results
    finally:
        await db.close()


def summary(results: dict[str, Any]) -> list[str]:
    rows: list[tuple[str, float, float, float, str, bool, float]] = []
    g, e, lat = results.get("gateway"), results.get("e2e"), results.get("latency")
    if g:
        rows.append(
            ("gateway submissions/s", g["stratus_median_per_s"], g["reference_median_per_s"],
             g["ratio"], f">= {g['target']}", g["ratio"] >= g["target"], g["ratio"])
        )  # fmt: skip
    if e:
        rows += [
            ("end-to-end jobs/s", e["stratus_median_per_s"], e["celery_median_per_s"],
             e["ratio"], f">= {e['target']}", e["ratio"] >= e["target"], e["ratio"]),
            ("  bare durable (c) jobs/s", e["durable_median_per_s"], e["celery_median_per_s"],
             e["durable_ratio_to_celery"], "-", True, math.nan),
        ]  # fmt: skip
    if "arrays" in results:
        rows += summary_rows(results["arrays"])
    if lat:
        rows += [
            ("latency p50 ms", lat["p50_ms"], math.nan, math.nan,
             f"< {TARGETS['p50_ms']:g}", lat["p50_ms"] < TARGETS["p50_ms"], lat["p50_ms"]),
            ("latency p99 ms", lat["p99_ms"], math.nan, math.nan,
             f"< {TARGETS['p99_ms']:g}", lat["p99_ms"] < TARGETS["p99_ms"], lat["p99_ms"]),
            ("latency cores busy", lat["cores_busy"], math.nan, math.nan,
             f"<= {TARGETS['latency_cores']:g}", lat["cores_busy"] <= TARGETS["latency_cores"],
             lat["cores_busy"]),
        ]  # fmt: skip
    out = [f"{'figure':<24}{'Stratus':>10}{'reference':>11}{'ratio':>8}  {'target':<8} result"]
    for name, s, r, q, target, ok, judged in rows:
        ref = f"{r:11.1f}" if not math.isnan(r) else f"{'-':>11}"
        rq = f"{q:8.2f}" if not math.isnan(q) else f"{'-':>8}"
        result = mark(ok, judged) if target != "-" else "(a reference, not a target)"
        out.append(f"{name:<24}{s:10.1f}{ref}{rq}  {target:<8} {result}")
    ceiling = ratio(g["reference_median_per_s"], e["celery_median_per_s"]) if g and e else math.nan
    if not math.isnan(ceiling):
        # Every job of the end-to-end phase is submitted over HTTP, so its rate cannot pass
        # the bare endpoint's: that endpoint's rate over Celery's bounds the reachable ratio.
        out.append(
            f"(the end-to-end ratio's ceiling here: the bare endpoint (a) alone, one insert and "
            f"one publish per HTTP request, reaches {ceiling:.2f}x Celery's rate)"
        )
    return out


def run(opts: Options) -> dict[str, Any]:
    if RUN_DIR.exists():
        shutil.rmtree(RUN_DIR)
    RUN_DIR.mkdir(parents=True)
    admin_key = "bench-admin-" + secrets.token_urlsafe(16)
    senv = stratus_env(admin_key) | dict(e.split("=", 1) for e in opts.env)
    pg = postgres_settings(senv)
    amqp = rabbit_settings(senv).url()
    celery_amqp = rabbit_settings({**senv, "STRATUS_RABBIT__VHOST": CELERY_VHOST}).url()
    redis_key = f"stratus_bench:{os.getpid()}:{secrets.token_hex(4)}"
    budget = Budget(opts.budget)
    with Teardown() as teardown:
        say("Stratus pipeline benchmark")
        say(f"  machine: {machine()}; PostgreSQL, RabbitMQ and Redis on this machine")
        say(
            f"  Stratus: supervisord (tools.cluster) with 1 gateway, 1 scheduler, "
            f"1 worker process (STRATUS_CONCURRENCY={opts.concurrency}), datamover; "
            f"log level INFO; database/vhost {DB}; ports {GATEWAY_PORT}-{WORKER_BASE_PORT}"
        )
        say(
            f"  load: 1 process, asyncio (uvloop) + aiohttp.ClientSession, {opts.clients} clients "
            "with one keep-alive connection each (the same generator for every reference)"
        )
        say(f"  Stratus source: {source_state()}")
        if opts.env:
            say(f"  settings: {' '.join(opts.env)}")
        say(f"  logs: {RUN_DIR}")
        t0 = time.monotonic()
        teardown.add("drop database", lambda: drop_database(DB))
        teardown.add("drop vhost", lambda: drop_vhost(VHOST))
        teardown.add("drop celery vhost", lambda: drop_vhost(CELERY_VHOST))
        drop_database(DB)  # leftovers of an interrupted run
        prepare_database(DB)
        prepare_vhost(VHOST)
        prepare_vhost(CELERY_VHOST)
        teardown.add("redis keys", lambda: _drop_redis_keys(redis_key))
        cfg = ClusterConfig(
            run_dir=RUN_DIR / "cluster",
            env=senv,
            gateway_port=GATEWAY_PORT,
            scheduler_port=SCHEDULER_PORT,
            datamover_port=DATAMOVER_PORT,
            worker_base_port=WORKER_BASE_PORT,
            workers=1,
            worker_env={"STRATUS_CONCURRENCY": str(opts.concurrency)},
            python=sys.executable,
        )
        cluster = LocalCluster(cfg)
        teardown.add("cluster", cluster.stop)
        cluster.start(timeout=120)
        say(f"  cluster ready in {time.monotonic() - t0:.1f} s")
        asyncio.run(_create_ref_table(pg.url(driver="postgresql")))
        ref_env = base_env() | {
            "BENCH_PG_DSN": pg.url(driver="postgresql"),
            "BENCH_AMQP_URL": amqp,
            "BENCH_REF_TABLE": REF_TABLE,
            "BENCH_REF_QUEUE": REF_QUEUE,
        }
        ref_cmd = [sys.executable, "-m", "uvicorn", "bench.ref_bare:app", "--host", "127.0.0.1"]
        ref_cmd += ["--port", str(REF_PORT), "--loop", "uvloop", "--http", "httptools"]
        ref_cmd += ["--no-access-log", "--log-level", "warning"]
        ref = Child("reference (a) uvicorn", ref_cmd, ref_env, RUN_DIR / "ref_bare.log")
        teardown.add("reference server", ref.stop)
        wait_http(f"http://127.0.0.1:{REF_PORT}/healthz", ref)
        background = background_load()
        say(
            f"  background load before the measurements: {background:.2f} of {os.cpu_count()} "
            "cores busy (the idle suite included)"
            + ("; the machine is BUSY: expect noisy figures" if background > 0.5 else "")
        )
        env = Env(
            opts=opts,
            cluster=cluster,
            supervisor=Supervisor(cluster.socket, timeout=60),
            ref=ref,
            ref_cmd=ref_cmd,
            ref_env=ref_env,
            gateway=cluster.url("gateway"),
            admin={"Authorization": f"Bearer {admin_key}"},
            pg_dsn=pg.url(driver="postgresql"),
            amqp_url=amqp,
            celery_amqp_url=celery_amqp,
            redis_key=redis_key,
            teardown=teardown,
            budget=budget,
        )
        results = uvloop.run(run_phases(env))
        log_problems = scan_logs(cluster)
        results["log_problems"] = log_problems
        results["background_load_cores"] = background
        results["wall_s"] = time.monotonic() - t0
    return results


def background_load(seconds: float = 2.0) -> float:
    """Cores busy on the whole machine over a short idle period."""
    meter = CpuMeter({})
    meter.start()
    time.sleep(seconds)
    return meter.stop()["machine"] / seconds


async def _create_ref_table(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {REF_TABLE} (id uuid PRIMARY KEY, kernel text NOT NULL, "
            "params jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), "
            "state text NOT NULL DEFAULT 'QUEUED', started_at timestamptz, "
            "finished_at timestamptz)"
        )
    finally:
        await conn.close()


def _drop_redis_keys(prefix: str) -> None:
    redis = Redis.from_url(REDIS_URL)
    try:
        keys = list(redis.scan_iter(match=f"{prefix}*"))
        if keys:
            redis.delete(*keys)
    finally:
        redis.close()


def scan_logs(cluster: LocalCluster) -> dict[str, dict[str, int]]:
    """Count warning/error/critical events (and tracebacks) in each service's log."""
    found: dict[str, dict[str, int]] = {}
    for log in sorted(cluster.log_dir.glob("*.log")):
        counts: dict[str, int] = {}
        for line in log.read_text(errors="replace").splitlines():
            key: str | None = None
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {}
                level = str(event.get("level", "")).lower()
                if level in ("warning", "error", "critical", "exception"):
                    key = f"{level}: {event.get('event', '?')}"
            elif line.startswith("Traceback"):
                key = "traceback"
            if key is not None:
                counts[key] = counts.get(key, 0) + 1
        if counts:
            found[log.name] = counts
    return found


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    try:
        results = run(opts)
    except KeyboardInterrupt:
        print("\ninterrupted: everything this run started was stopped and dropped", flush=True)
        return 130
    say()
    if results["log_problems"]:
        say("Warnings and errors in the Stratus logs:")
        for name, counts in results["log_problems"].items():
            say(f"  {name}: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    else:
        say("No warnings or errors in the Stratus logs.")
    say()
    say("Summary" + (" (quick mode)" if opts.quick else ""))
    for line in summary(results):
        say("  " + line)
    results["options"] = opts.__dict__
    results["machine"] = machine()
    results["source"] = source_state()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "pipeline.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    say(f"  (results in {out.relative_to(ROOT)}; {time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
