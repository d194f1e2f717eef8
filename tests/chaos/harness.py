"""The chaos run: the whole suite as processes (``LocalCluster``) on private servers
(``tools.private_servers``), three tenants submitting a mixed, deterministic workload while
faults are injected; then quiet, checks (``checks.py``) and figures.

Timeline: half the jobs are submitted at once; once ``calm_fraction`` of all jobs have
succeeded without any fault (throughput without faults), the rest are submitted at a steady
pace while a worker is killed (SIGKILL, supervisord restarts it) every
``worker_kill_every_s`` at most (one that is ready, while another one is ready too, and only
while jobs are unfinished) until ``kill_until`` of the jobs succeeded, and, one after
another, the scheduler and the datamover are killed (SIGKILL) and RabbitMQ
(``stop_app``/``start_app``), PostgreSQL and Redis are restarted (throughput during faults:
until the last fault). Each fault waits for the next job completion before the next one
starts. Recovery time of a fault: from its start to the first job completion after it ended
(the server is back, the process is killed).

Arrays are among the jobs (``workload``; a job is a single job or an element). Faults are
aimed at them (``targets``): while elements run, the worker killed is the one that runs
the most of them, and PostgreSQL is restarted while an array's elements finish one after
another, so that their records are cut off."""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.engine import make_engine
from tests.chaos import checks, long_jobs, targets, workload
from tests.chaos.checks import Findings
from tests.chaos.report import ChaosPlan as ChaosPlan
from tests.chaos.report import ChaosReport as ChaosReport
from tests.chaos.report import Fault
from tests.chaos.report import Progress as Progress
from tests.chaos.targets import ArrayHits
from tests.tiers import disk_tiers
from tools.cluster import ClusterConfig, LocalCluster, prepare_database
from tools.private_servers import PrivateServers, free_ports
from tools.provision import postgres_settings
from tools.supervision import http_status

DATABASE = "stratus_chaos"
LOGS = Path(__file__).resolve().parents[2] / "run" / "chaos-logs"  # the last run's, kept
MIGRATION_BYTES = 12 * 2**20  # three chunks each, paced so that the datamover dies mid-copy


ONE_OFF_FAULTS = 5  # scheduler, datamover, RabbitMQ, PostgreSQL, Redis
KILL_POLL_S = 0.25  # how often the worker killer looks for its moment


# jobs: single jobs and elements (an array's own row is none)
_SUCCEEDED = text(
    "SELECT count(*) FROM jobs WHERE tenant_id = ANY(:t) AND state = 'SUCCEEDED' AND NOT is_array"
)
_UNFINISHED = text(
    "SELECT count(*) FROM jobs WHERE tenant_id = ANY(:t) AND state NOT IN "
    "('SUCCEEDED','FAILED','CANCELLED','TIMED_OUT')"
)


# --- the cluster on private servers ------------------------------------------------------------
@contextlib.contextmanager
def chaos_cluster(
    root: Path, plan: ChaosPlan, env: dict[str, str], *, keep_logs: Path | None = None
) -> Iterator[tuple[LocalCluster, PrivateServers]]:
    """Private servers, a database on them, and the suite under supervisord; all stopped
    on exit, whatever happened. The services' logs are copied to ``keep_logs`` then."""
    servers = PrivateServers.create()  # in a directory of its own that its users can enter
    servers.start()
    try:
        server_env = servers.env()
        prepare_database(DATABASE, env=server_env)
        ports = free_ports(3)
        full_env = {
            **env,
            **server_env,
            "STRATUS_POSTGRES__DATABASE": DATABASE,
            **disk_tiers(root / "tiers"),
            "STRATUS_STORAGE__CHUNK_BYTES": str(5 * 2**20),
            "STRATUS_LOG_LEVEL": "INFO",
            "STRATUS_REAPER_INTERVAL_S": "0.5",
            "STRATUS_WORKER_TTL_S": "5",
            "STRATUS_REDISPATCH_AFTER_S": "15",
            "STRATUS_CLAIM_INTERVAL_S": "0.5",
            "STRATUS_LEASE_S": "4",  # datamover and worker leases: a killed one is seen soon
            "STRATUS_THROTTLE_BYTES_PER_S": str(2 * 2**20),
        }
        cfg = ClusterConfig(
            run_dir=root / "cluster",
            env=full_env,
            gateway_port=ports[0],
            scheduler_port=ports[1],
            datamover_port=ports[2],
            worker_base_port=_worker_base(plan.workers),
            workers=plan.workers,
            worker_env={
                "STRATUS_CONCURRENCY": str(plan.concurrency),
                "STRATUS_HEARTBEAT_INTERVAL_S": "0.5",
                "STRATUS_LEASE_S": "3",
            },
        )
        cluster = LocalCluster(cfg)
        cluster.start(timeout=180)
        try:
            yield cluster, servers
        finally:
            cluster.stop()
            if keep_logs is not None:
                shutil.rmtree(keep_logs, ignore_errors=True)
                shutil.copytree(cluster.log_dir, keep_logs)
    finally:
        servers.stop()


def _worker_base(workers: int) -> int:
    """A base port with ``workers`` free ports above it."""
    import socket

    for _ in range(100):
        base = free_ports(1)[0]
        try:
            for port in range(base, base + workers):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range for the workers")


# --- the run -----------------------------------------------------------------------------------
class ChaosRun:
    def __init__(
        self,
        cluster: LocalCluster,
        servers: PrivateServers,
        plan: ChaosPlan,
        admin_key: str,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.servers = servers
        self.plan = plan
        self.admin_key = admin_key
        self.say = say or (lambda message: print(message, flush=True))
        self.faults: list[Fault] = []
        self.ids: dict[int, str] = {}
        self.specs: list[workload.JobSpec] = []
        self.tenants: list[workload.Tenant] = []
        self.hits = ArrayHits()
        # the array submitted just before PostgreSQL restarts, and that restart's times
        self.pg_array: workload.JobSpec | None = None
        self.restart: tuple[float, float] | None = None
        # the long checkpointing jobs (``long_jobs``) and the kills aimed at them
        self.long_ids: list[str] = []
        self.long_kills: list[long_jobs.Kill] = []
        pg = postgres_settings(cluster.cfg.env).model_copy(update={"pool_size": 2})
        self.engine: AsyncEngine = make_engine(pg, application_name="stratus-chaos")

    @property
    def tenant_ids(self) -> list[uuid.UUID]:
        return [uuid.UUID(t.id) for t in self.tenants]

    # progress, read from the database (through its outages)
    async def _count_jobs(self, query: TextClause) -> int | None:
        """Jobs of the run that ``query`` counts (None while the database is away)."""
        try:
            async with asyncio.timeout(5), self.engine.connect() as conn:
                n = await conn.scalar(query, {"t": self.tenant_ids})
                return int(n or 0)
        except Exception:
            return None

    async def succeeded(self) -> int | None:
        return await self._count_jobs(_SUCCEEDED)

    async def unfinished(self) -> int | None:
        """Jobs of the run not in a final state yet (None while the database is away)."""
        return await self._count_jobs(_UNFINISHED)

    async def wait_succeeded(self, count: int, timeout: float) -> None:
        """Until ``count`` jobs SUCCEEDED; fails after ``timeout``, or sooner when none
        succeeded for the plan's ``stall_s``."""
        deadline = time.monotonic() + timeout
        progress = Progress(self.plan.stall_s)
        while (done := await self.succeeded() or 0) < count:
            now = time.monotonic()
            stalled = progress.stalled(done, now)
            if now > deadline or stalled:
                why = f"none for {self.plan.stall_s:.0f}s" if stalled else "timed out"
                raise AssertionError(
                    f"fewer than {count} jobs SUCCEEDED ({done}) after "
                    f"{timeout - (deadline - now):.0f}s: {why}"
                )
            await asyncio.sleep(0.25)

    async def wait_next_completion(self, after: float, timeout: float = 120) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5), self.engine.connect() as conn:
                    at = await conn.scalar(
                        text(
                            "SELECT min(finished_at) FROM jobs WHERE state = 'SUCCEEDED' "
                            "AND NOT is_array AND finished_at > to_timestamp(:after)"
                        ),
                        {"after": after},
                    )
                if isinstance(at, datetime):
                    return at.timestamp()
            await asyncio.sleep(0.25)
        return None

    # faults
    async def _fault(self, name: str, action: Callable[[], None]) -> Fault:
        fault = Fault(name, time.time())
        self.say(f"fault: {name}")
        await asyncio.to_thread(action)
        fault.ended = time.time()
        self.faults.append(fault)
        return fault

    async def _kill(self, process: str) -> None:
        await asyncio.to_thread(self.cluster.signal, process, signal.SIGKILL)

    async def kill_workers(self, stop: asyncio.Event) -> None:
        """SIGKILL a ready worker at most every ``worker_kill_every_s`` (once the work moved on
        by ``jobs_between_worker_kills``) until ``stop``, and only while jobs are unfinished:
        a kill with nothing left to run would "recover" only when later work came (a one-off
        fault's share), which once read as a 116 s recovery. The conditions are checked every
        ``KILL_POLL_S``, so that the short moments with work in flight on a fast machine
        (each share runs in about a second) get their kills."""
        n = 0
        progress_at_last_kill = -self.plan.jobs_between_worker_kills
        last_kill = -math.inf
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KILL_POLL_S):
                    await stop.wait()
            if stop.is_set():
                return
            if time.monotonic() - last_kill < self.plan.worker_kill_every_s:
                continue
            if not await self.unfinished():
                continue  # nothing to recover (see above)
            done = await self.succeeded()
            if done is None or done < progress_at_last_kill + self.plan.jobs_between_worker_kills:
                continue
            if done >= self.plan.kill_until * self.plan.jobs:
                continue  # the work left must outlast the kill, or its recovery is unmeasurable
            victim = await self._victim(n)
            n += 1
            if victim is None:
                continue
            name, holder = victim
            progress_at_last_kill = done
            last_kill = time.monotonic()
            if holder is not None:
                self.hits.kills_on_elements += 1
                self.hits.held += holder.elements
                self.hits.killed_workers.append(holder.worker)
            with contextlib.suppress(Exception):
                await self._fault(
                    f"kill -9 worker#{n}",
                    lambda name=name: self.cluster.signal(name, signal.SIGKILL),  # type: ignore[misc]
                )

    async def run_long_jobs(self, api: httpx.AsyncClient) -> None:
        """Submit the long checkpointing jobs and kill each one's worker between two of its
        checkpoints (``long_jobs``)."""
        specs = long_jobs.specs(self.tenants)
        await workload.submit_all(api, specs, self.ids, concurrency=len(specs))
        self.specs.extend(specs)
        self.long_ids = [self.ids[s.index] for s in specs]

        async def kill(worker: str) -> bool:
            pid = int(worker.rsplit("-", 1)[1])  # a worker's name: <host>-<pid>
            names = [n for n, p in (await asyncio.to_thread(self.pids)).items() if p == pid]
            if not names:
                return False
            await self._fault(
                f"kill -9 worker#long-{len(self.long_kills)}",
                lambda: self.cluster.signal(names[0], signal.SIGKILL),
            )
            return True

        await long_jobs.kill_each(self.engine, self.long_ids, kill, self.long_kills)

    async def _victim(self, n: int) -> tuple[str, targets.Holder | None] | None:
        """The worker process to kill now, with what it runs of the arrays: the ready one
        that runs the most elements; none while elements are queued or running but not on a
        worker that may be killed (the next poll looks again); else the ``n``-th in turn.
        Never the last one ready, nor one still starting after its last kill."""
        ready = await asyncio.to_thread(self.ready_workers)
        if len(ready) < 2:
            return None
        running = await targets.running_elements(self.engine, self.tenant_ids)
        pids = await asyncio.to_thread(self.pids)
        holder = targets.pick_holder(ready, pids, running)
        if holder is not None:
            return holder.process, holder
        if await targets.elements_live(self.engine, self.tenant_ids):
            return None
        name = self.cluster.worker(n % self.plan.workers)
        return (name, None) if name in ready else None

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.cluster.status() if p.pid > 0}

    def ready_workers(self) -> list[str]:
        return [
            name
            for name in self.cluster.worker_names()
            if http_status(self.cluster.port(name), "/readyz") == 200
        ]

    async def start_migrations(self, api: httpx.AsyncClient) -> None:
        for n, t in enumerate(self.tenants[: self.plan.migrations]):
            name = f"mig/blob-{n}.bin"
            await workload.call(
                api,
                "PUT",
                f"/v1/datasets/{name}",
                ok=(200, 201),
                content=workload.blob(MIGRATION_BYTES, n),
                headers=t.headers,
            )
            await workload.call(
                api,
                "POST",
                "/v1/migrations",
                ok=(202,),
                json={"dataset": name, "to_tier": "archive", "mode": "copy"},
                headers={**t.headers, "Idempotency-Key": f"chaos-mig-{n}"},
            )

    async def migrations_running(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5), self.engine.connect() as conn:
                    n = await conn.scalar(
                        text(
                            "SELECT count(*) FROM migrations WHERE state = 'RUNNING' "
                            "AND bytes_done > 0"
                        )
                    )
                if n:
                    return
            await asyncio.sleep(0.2)

    async def services_ready(self, timeout: float = 120) -> None:
        """Until the gateway, the scheduler and the datamover answer /readyz: each one-off
        fault finds the processes that the one before killed started again, so that no
        fault lands in the middle of a process's start (a start cut off by a broker restart
        is a fault of its own)."""
        for process in ("gateway", "scheduler", "datamover"):
            await asyncio.to_thread(self.cluster.wait_ready, process, timeout)

    async def array_finishing(self, api: httpx.AsyncClient, spec: workload.JobSpec) -> None:
        """Submit the array ``spec`` and wait until its elements finish one after another
        (one SUCCEEDED, another RUNNING): a restart then cuts their records off."""
        await workload.submit_all(api, [spec], self.ids, concurrency=1)
        await targets.wait_elements_finishing(
            self.engine, uuid.UUID(self.ids[spec.index]), timeout=self.plan.stall_s
        )

    async def one_off_faults(
        self, api: httpx.AsyncClient, after: list[list[workload.JobSpec]]
    ) -> None:
        """Each fault once, ``after[k]`` submitted as soon as the k-th is over, so that a job
        completion follows every fault however fast the machine (a Redis restart, say, stops
        no job: the work in flight may all be done before it is over)."""
        srv, down = self.servers, self.plan.down_s
        steps: list[tuple[str, Callable[[], None]]] = [
            ("kill -9 scheduler", lambda: self.cluster.signal("scheduler", signal.SIGKILL)),
            ("kill -9 datamover", lambda: self.cluster.signal("datamover", signal.SIGKILL)),
            ("restart rabbitmq", lambda: srv.restart_rabbitmq(down_s=down)),
            ("restart postgres", lambda: srv.restart_postgres(down_s=down)),
            ("restart redis", lambda: srv.restart_redis(down_s=down)),
        ]
        assert len(steps) == ONE_OFF_FAULTS
        for (name, action), batch in zip(steps, after, strict=True):
            await self.services_ready()
            if name == "kill -9 datamover":
                await self.start_migrations(api)
                await self.migrations_running()
            if name == "restart postgres" and self.pg_array is not None:
                await self.array_finishing(api, self.pg_array)
            fault = await self._fault(name, action)
            if name == "restart postgres":
                self.restart = (fault.started, fault.ended)
            await workload.submit_all(api, batch, self.ids, concurrency=4)
            fault.recovered = await self.wait_next_completion(fault.ended)
            await asyncio.sleep(self.plan.fault_gap_s)

    async def wait_quiet(self, timeout: float) -> None:
        """Every submitted job final, no migration unfinished, the outbox empty; then the
        consumers' queues empty (a minute at most: what stays there is a finding)."""
        deadline = time.monotonic() + timeout
        progress = Progress(self.plan.stall_s)
        sql = text(
            "SELECT (SELECT count(*) FROM jobs WHERE tenant_id = ANY(:t) AND state NOT IN "
            "('SUCCEEDED','FAILED','CANCELLED','TIMED_OUT')) + (SELECT count(*) FROM migrations "
            "WHERE state IN ('PENDING','RUNNING')) + (SELECT count(*) FROM outbox)"
        )
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5), self.engine.connect() as conn:
                    left = await conn.scalar(sql, {"t": self.tenant_ids})
                if left == 0:
                    break
                if left is not None and progress.stalled(-left, time.monotonic()):
                    self.say(f"nothing finished for {self.plan.stall_s:.0f}s; {left} left")
                    break  # the findings say what is stuck
            await asyncio.sleep(0.5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            depths = await asyncio.to_thread(self.queue_depths)
            if not any(n for q, n in depths.items() if not q.endswith(".dlq")):
                return
            await asyncio.sleep(1)

    async def run(self) -> ChaosReport:
        plan = self.plan
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=self.cluster.url("gateway"), timeout=10) as api:
            self.tenants = await workload.create_tenants(
                api, self.admin_key, plan.tenants, run=workload.run_id()
            )
            await workload.upload_inputs(api, self.tenants)
            self.specs = specs = workload.job_specs(plan.jobs, self.tenants)
            half = len(specs) // 2
            await workload.submit_all(api, specs[:half], self.ids)
            self.say(
                f"submitted {sum(s.units for s in specs[:half])} jobs; "
                f"waiting for {plan.calm_fraction:.0%} to succeed"
            )
            await self.wait_succeeded(max(1, int(plan.calm_fraction * plan.jobs)), 600)
            calm_end = time.time()
            stop = asyncio.Event()
            killer = asyncio.create_task(self.kill_workers(stop))
            long = asyncio.create_task(self.run_long_jobs(api))
            # a share of the rest goes in as soon as each one-off fault is over (see there)
            rest = specs[half:]
            # the last bounded array of the rest goes in just before PostgreSQL restarts
            bounded = [s for s in rest if s.array and s.array.get("max_concurrent")]
            self.pg_array = bounded[-1] if bounded else None
            rest = [s for s in rest if s is not self.pg_array]
            share = len(rest) // (ONE_OFF_FAULTS + 1)
            after = [rest[k * share : (k + 1) * share] for k in range(ONE_OFF_FAULTS)]
            trickle = asyncio.create_task(
                workload.submit_all(
                    api,
                    rest[ONE_OFF_FAULTS * share :],
                    self.ids,
                    concurrency=4,
                    pace_s=plan.trickle_s,
                )
            )
            try:
                await self.one_off_faults(api, after)
                await trickle
                await long
                # workers keep dying until most of the work is done
                await self.wait_succeeded(int(plan.kill_until * plan.jobs), plan.quiet_timeout_s)
            finally:
                stop.set()
                await killer
                trickle.cancel()
                long.cancel()
            faults_end = time.time()
            for fault in self.faults:
                if fault.recovered is None and fault.name.startswith("kill -9 worker"):
                    # read from finished_at: waiting longer does not change the figure. Only
                    # worker kills: a one-off fault that saw no completion within its own
                    # wait stays "never"; the next completion would be that of the next
                    # fault's share (how an idle system once read as a 135 s recovery)
                    fault.recovered = await self.wait_next_completion(fault.ended, timeout=120)
            self.say("faults over; waiting for quiet")
            await self.wait_quiet(plan.quiet_timeout_s)
        report = ChaosReport(plan, await self.findings(), self.faults, self.hits)
        report.long_jobs = await self.long_findings()
        report.quiet_after_s = time.time() - faults_end
        await self.throughput(report, calm_end, faults_end)
        report.total_s = time.monotonic() - started
        await self.engine.dispose()
        return report

    async def findings(self) -> Findings:
        queues = await asyncio.to_thread(self.queue_depths)
        submitted = [s for s in self.specs if s.index in self.ids]
        async with self.engine.connect() as conn:
            await targets.count_hits(conn, self.tenant_ids, self.hits, self.restart)
            return await checks.collect(
                conn,
                self.tenant_ids,
                sum(s.units for s in submitted),
                queues,
                arrays=sum(1 for s in submitted if s.array),
            )

    async def long_findings(self) -> long_jobs.LongFindings:
        async with self.engine.connect() as conn:
            return await long_jobs.check(conn, self.long_ids, self.long_kills)

    def queue_depths(self) -> dict[str, int]:
        out = self.servers.ctl("list_queues", "-q", "--no-table-headers", "name", "messages")
        depths = {}
        for line in out.splitlines():
            parts = line.split()
            if (
                len(parts) == 2
                and parts[1].isdigit()
                and not parts[0].startswith("stratus.control")
            ):
                depths[parts[0]] = int(parts[1])
        return depths

    async def throughput(self, report: ChaosReport, calm_end: float, faults_end: float) -> None:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT extract(epoch FROM finished_at) FROM jobs WHERE state = 'SUCCEEDED' "
                    "AND tenant_id = ANY(:t) AND NOT is_array ORDER BY finished_at"
                ),
                {"t": self.tenant_ids},
            )
            done = [float(r[0]) for r in rows.all()]
        if not done:
            return
        first = done[0]
        calm = [x for x in done if x <= calm_end]
        during = [x for x in done if calm_end < x <= faults_end]
        report.calm_window_s = max(calm_end - first, 1e-6)
        report.fault_window_s = max(faults_end - calm_end, 1e-6)
        report.calm_jobs_per_s = len(calm) / report.calm_window_s
        report.fault_jobs_per_s = len(during) / report.fault_window_s
