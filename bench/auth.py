"""Benchmark of authentication on the hot read path: both figures from the same run.

    .venv/bin/python bench/auth.py [--quick] [--rounds K] [--seconds S] [--clients C]

Authenticated ``GET /v1/jobs/{id}`` with a tenant key (parse the header, HMAC the key, the
per-process key cache, the scope check and the tenant's global rate limit on Redis: all that
``get_principal`` does) against the very same request with authentication disabled. One
gateway process (``bench/auth_app.py``: the real app, plus its jobs router included a second
time under ``/noauth``, where the principal dependency returns a fixed tenant) serves both, so
they share the middleware, the router, the database pool and the serialisation; only the
authentication differs.

``--rounds`` rounds of ``--seconds`` each per variant, from ``--clients`` concurrent clients
with one keep-alive connection each (asyncio + httpx, as ``bench/pipeline.py``). The variants
alternate (A B, B A, ...) so that drift in the machine's other load weighs on both alike.
Printed: requests/s per round, the medians, their ratio (target >= 0.8: a cached key lookup,
no database hit per request) and the median of the per-round ratios; beside them the CPU time
per request of the gateway, PostgreSQL and Redis, from ``/proc`` (an extra database query per
request would show in PostgreSQL's figure).

Everything it starts lives on port 19020, in database and vhost ``stratus_bench_auth`` and in
Redis db 15, and is stopped or dropped on exit, also on error or Ctrl-C. Results are printed
and written to ``bench/results/auth.json``; the gateway's log stays in
``bench/results/auth-run/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import shutil
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import uvloop
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo root

from bench.auth_app import NOAUTH_PREFIX, TENANT_HEADER
from bench.cpu import CpuMeter, named, per_item_ms, pids
from bench.pipeline import (
    Child,
    Teardown,
    background_load,
    base_env,
    machine,
    mark,
    median,
    ratio,
    say,
    source_state,
    stratus_env,
    wait_http,
)
from services.gateway.auth import Authenticator
from shared.db.engine import make_engine, make_sessionmaker
from shared.ratelimit import RateLimiter
from shared.settings import QuotaDefaults
from tools.cluster import drop_database, drop_vhost, prepare_database, prepare_vhost
from tools.provision import postgres_settings

ROOT = Path(__file__).resolve().parent.parent
DB = VHOST = "stratus_bench_auth"
PORT = 19020
REDIS_URL = "redis://127.0.0.1:6379/15"  # bench-only db
RESULTS = ROOT / "bench" / "results"
RUN_DIR = RESULTS / "auth-run"
TARGET = 0.8
VARIANTS = ("auth", "noauth")
LABELS = {"auth": "authenticated", "noauth": "auth disabled"}


@dataclass(frozen=True)
class Options:
    rounds: int
    seconds: float
    clients: int
    quick: bool


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="bench/auth.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=None, help="rounds per variant (6)")
    p.add_argument("--seconds", type=float, default=None, help="seconds per round (4)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    p.add_argument("--quick", action="store_true", help="4 rounds of 2 s")
    a = p.parse_args(argv)
    rounds = a.rounds if a.rounds is not None else (4 if a.quick else 6)
    seconds = a.seconds if a.seconds is not None else (2.0 if a.quick else 4.0)
    if rounds < 1 or seconds <= 0 or a.clients < 1:
        p.error("--rounds, --seconds and --clients must be positive")
    return Options(rounds, seconds, a.clients, a.quick)


@dataclass
class Round:
    variant: str
    ok: int
    elapsed_s: float
    statuses: Counter[int | str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def failures(self) -> int:
        """Answers other than 200 (and failed requests)."""
        return sum(n for k, n in self.statuses.items() if k != 200)

    def cpu_ms(self, group: str) -> float:
        return per_item_ms(self.cpu, self.ok).get(group, math.nan)


async def get_loop(
    base_url: str, path: str, headers: dict[str, str], *, clients: int, seconds: float,
    meter: CpuMeter, variant: str,
) -> Round:  # fmt: skip
    """GET ``path`` from ``clients`` clients (one connection each), each sending its next
    request as soon as its answer arrives, for ``seconds``; two untimed requests per client
    first (connections open, caches warm)."""
    pool = [
        httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(30.0),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        for _ in range(clients)
    ]
    statuses: Counter[int | str] = Counter()
    errors: dict[str, None] = {}
    try:
        for _ in range(2):
            await asyncio.gather(*(c.get(path) for c in pool))
        stop_at = math.inf

        async def run(client: httpx.AsyncClient) -> None:
            while time.perf_counter() < stop_at:
                try:
                    r = await client.get(path)
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                    errors.setdefault(repr(exc))
                    continue
                statuses[r.status_code] += 1
                if r.status_code != 200:
                    errors.setdefault(f"{r.status_code}: {r.text[:200]}")

        meter.start()
        t0 = time.perf_counter()
        stop_at = t0 + seconds
        await asyncio.gather(*(run(c) for c in pool))
        elapsed = time.perf_counter() - t0
        cpu = meter.stop()
    finally:
        await asyncio.gather(*(c.aclose() for c in pool))
    return Round(variant, statuses[200], elapsed, statuses, list(errors)[:3], cpu)


@dataclass
class Target:
    base_url: str
    job_id: str
    tenant_id: str
    key_headers: dict[str, str]

    def request(self, variant: str) -> tuple[str, dict[str, str]]:
        """(path, headers) of the same GET in each variant."""
        if variant == "auth":
            return f"/v1/jobs/{self.job_id}", self.key_headers
        return f"{NOAUTH_PREFIX}/v1/jobs/{self.job_id}", {TENANT_HEADER: self.tenant_id}


def prepare(base_url: str, admin: dict[str, str]) -> Target:
    """A tenant (rate limit far above what the machine serves, so that every request is
    charged to Redis and none refused), a key, one job; then check both variants agree."""
    with httpx.Client(base_url=base_url, timeout=30) as api:
        t = api.post(
            "/v1/tenants",
            json={"name": f"bench-auth-{time.time_ns()}", "quotas": {"requests_per_second": 1e6}},
            headers=admin,
        )
        t.raise_for_status()
        tenant_id = str(t.json()["id"])
        k = api.post(f"/v1/tenants/{tenant_id}/keys", json={"name": "bench"}, headers=admin)
        k.raise_for_status()
        key_headers = {"Authorization": f"Bearer {k.json()['key']}"}
        job = api.post(
            "/v1/jobs",
            json={"kernel": "montecarlo_pi", "params": {"samples": 1000, "seed": 1}},
            headers=key_headers,
        )
        job.raise_for_status()
        target = Target(base_url, str(job.json()["id"]), tenant_id, key_headers)
        answers = {}
        for v in VARIANTS:
            path, headers = target.request(v)
            answers[v] = api.get(path, headers=headers)
        for v, r in answers.items():
            if r.status_code != 200:
                raise RuntimeError(f"{v}: {r.status_code} {r.text[:200]}")
        if answers["auth"].json() != answers["noauth"].json():
            raise RuntimeError("the two variants answer differently")
        if api.get(f"/v1/jobs/{target.job_id}").status_code != 401:
            raise RuntimeError("the authenticated route answers without a key")
        other = {TENANT_HEADER: str(uuid.uuid4())}
        if api.get(f"{NOAUTH_PREFIX}/v1/jobs/{target.job_id}", headers=other).status_code != 404:
            raise RuntimeError("the unauthenticated route is not scoped to its tenant")
    return target


async def measure(opts: Options, target: Target, gateway_pid: int) -> list[Round]:
    groups = {
        "gateway": pids(gateway_pid),
        "PostgreSQL (all)": named("postgres"),
        "Redis": named("redis-server"),
        "load generator": pids(os.getpid()),
    }
    rounds: list[Round] = []
    for i in range(opts.rounds):
        order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            path, headers = target.request(variant)
            meter = CpuMeter(groups, flat={"load generator"})
            r = await get_loop(
                target.base_url, path, headers, clients=opts.clients, seconds=opts.seconds,
                meter=meter, variant=variant,
            )  # fmt: skip
            rounds.append(r)
            errors = {k: v for k, v in r.statuses.items() if k != 200}
            say(
                f"    round {i + 1} {LABELS[variant]:<14} {r.rate:8.1f} req/s "
                f"({r.ok} in {r.elapsed_s:.2f} s{', errors ' + str(errors) if errors else ''}); "
                f"CPU per request: gateway {r.cpu_ms('gateway'):.3f} ms, PostgreSQL "
                f"{r.cpu_ms('PostgreSQL (all)'):.3f} ms, Redis {r.cpu_ms('Redis'):.3f} ms, "
                f"load generator {r.cpu_ms('load generator'):.3f} ms; whole machine "
                f"{r.cpu.get('machine', 0.0) / r.elapsed_s:.2f} cores"
            )
            for e in r.errors:
                say(f"          e.g. {e}")
    return rounds


async def auth_path_cost(
    senv: dict[str, str], key_headers: dict[str, str], n: int
) -> dict[str, float]:
    """CPU microseconds per call of the two halves of ``get_principal``, in this process
    against the same database and Redis: ``authenticate`` with the key cached (HMAC, cache
    hit, quotas) and the rate limit (one Lua call on Redis). Unlike the HTTP rounds, hardly
    touched by the other load on the machine."""
    engine = make_engine(postgres_settings(senv), application_name="bench-auth")
    redis = AsyncRedis.from_url(REDIS_URL)
    auth = Authenticator(
        make_sessionmaker(engine),
        admin_key=senv["STRATUS_ADMIN_KEY"],
        key_secret=senv["STRATUS_KEY_SECRET"],
        quota_defaults=QuotaDefaults(),
    )
    limiter = RateLimiter(redis, prefix="stratus_bench_auth:rl:")
    header = key_headers["Authorization"]
    try:
        principal = await auth.authenticate(header)  # the one database query: now cached
        tenant = str(principal.tenant_id)
        await limiter.check(tenant, 1e6)
        t0 = time.process_time()
        for _ in range(n):
            await auth.authenticate(header)
        t1 = time.process_time()
        for _ in range(n):
            await limiter.check(tenant, 1e6)
        t2 = time.process_time()
        await redis.delete(f"stratus_bench_auth:rl:{tenant}")
    finally:
        await redis.aclose()
        await engine.dispose()
    return {"authenticate_us": (t1 - t0) / n * 1e6, "rate_limit_us": (t2 - t1) / n * 1e6}


def summarise(rounds: list[Round]) -> dict[str, Any]:
    by = {v: [r for r in rounds if r.variant == v] for v in VARIANTS}
    rates = {v: [r.rate for r in by[v]] for v in VARIANTS}
    med = {v: median(rates[v]) for v in VARIANTS}
    paired = median([ratio(a.rate, b.rate) for a, b in zip(by["auth"], by["noauth"], strict=True)])
    cpu = {
        v: {
            g: median([r.cpu_ms(g) for r in by[v]])
            for g in ("gateway", "PostgreSQL (all)", "Redis")
        }
        for v in VARIANTS
    }
    return {
        "requests_per_s": rates,
        "median_per_s": med,
        "ratio": ratio(med["auth"], med["noauth"]),
        "paired_ratio_median": paired,
        "cpu_ms_per_request_median": cpu,
        # auth-disabled CPU / authenticated CPU per request: the throughput ratio's analogue
        "cpu_ratio": ratio(cpu["noauth"]["gateway"], cpu["auth"]["gateway"]),
        "errors": {v: sum(r.failures() for r in by[v]) for v in VARIANTS},
        "target": TARGET,
    }


def run(opts: Options) -> dict[str, Any]:
    if RUN_DIR.exists():
        shutil.rmtree(RUN_DIR)
    RUN_DIR.mkdir(parents=True)
    admin_key = "bench-admin-" + secrets.token_urlsafe(16)
    senv = stratus_env(admin_key) | {
        "STRATUS_POSTGRES__DATABASE": DB,
        "STRATUS_RABBIT__VHOST": VHOST,
        "STRATUS_REDIS__URL": REDIS_URL,
        "STRATUS_PORT": str(PORT),
        "PYTHONUNBUFFERED": "1",
    }
    with Teardown() as teardown:
        say("Stratus authentication benchmark")
        say(f"  machine: {machine()}; PostgreSQL, RabbitMQ and Redis on this machine")
        say(
            f"  one gateway process (bench/auth_app.py: uvicorn, uvloop, httptools, log level "
            f"INFO) on port {PORT}, database/vhost {DB}; no scheduler or worker"
        )
        say(
            f"  load: 1 process, asyncio (uvloop) + httpx.AsyncClient, {opts.clients} clients "
            "with one keep-alive connection each"
        )
        say(f"  Stratus source: {source_state()}")
        t0 = time.monotonic()
        teardown.add("drop database", lambda: drop_database(DB))
        teardown.add("drop vhost", lambda: drop_vhost(VHOST))
        drop_database(DB)  # leftovers of an interrupted run
        prepare_database(DB)
        prepare_vhost(VHOST)
        gateway = Child(
            "gateway", [sys.executable, "-m", "bench.auth_app"], base_env() | senv,
            RUN_DIR / "gateway.log",
        )  # fmt: skip
        teardown.add("gateway", gateway.stop)
        base_url = f"http://127.0.0.1:{PORT}"
        wait_http(f"{base_url}/readyz", gateway, timeout=60)
        target = prepare(base_url, {"Authorization": f"Bearer {admin_key}"})
        teardown.add("redis keys", lambda: _drop_rate_limit_key(target.tenant_id))
        background = background_load()
        say(
            f"  ready in {time.monotonic() - t0:.1f} s; background load before the measurements: "
            f"{background:.2f} of {os.cpu_count()} cores busy"
            + ("; the machine is BUSY: expect noisy figures" if background > 0.5 else "")
        )
        say()
        say(
            f"GET /v1/jobs/{{id}}: {opts.rounds} round(s) of {opts.seconds:g} s per variant, "
            "alternating; authenticated = tenant key (cached lookup, scope, Redis rate limit); "
            f"auth disabled = the same route under {NOAUTH_PREFIX}, tenant from a header"
        )
        rounds = uvloop.run(measure(opts, target, gateway.proc.pid))
        results = summarise(rounds)
        results["auth_path_cpu_us"] = uvloop.run(auth_path_cost(senv, target.key_headers, 5000))
        results["rounds"] = [
            {"variant": r.variant, "per_s": r.rate, "ok": r.ok, "elapsed_s": r.elapsed_s,
             "statuses": {str(k): v for k, v in r.statuses.items()},
             "cpu_ms_per_request": per_item_ms(r.cpu, r.ok)}
            for r in rounds
        ]  # fmt: skip
        results["background_load_cores"] = background
        results["wall_s"] = time.monotonic() - t0
    return results


def _drop_rate_limit_key(tenant_id: str) -> None:
    redis = Redis.from_url(REDIS_URL)
    try:
        redis.delete(f"stratus:rl:{tenant_id}")
    finally:
        redis.close()


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        results = run(opts)
    except KeyboardInterrupt:
        print("\ninterrupted: everything this run started was stopped and dropped", flush=True)
        return 130
    med, cpu, q = results["median_per_s"], results["cpu_ms_per_request_median"], results["ratio"]
    say()
    say("Summary" + (" (quick mode)" if opts.quick else ""))
    say(
        f"  median authenticated {med['auth']:.1f} req/s; auth disabled {med['noauth']:.1f} "
        f"req/s; ratio {q:.2f} (target >= {TARGET}: {mark(q >= TARGET, q)}); median of the "
        f"per-round ratios {results['paired_ratio_median']:.2f}"
    )
    gw = {v: cpu[v]["gateway"] for v in VARIANTS}
    say(
        f"  median gateway CPU per request: authenticated {gw['auth']:.3f} ms, auth disabled "
        f"{gw['noauth']:.3f} ms (auth costs {gw['auth'] - gw['noauth']:.3f} ms; ratio "
        f"{results['cpu_ratio']:.2f}, the less noisy figure); PostgreSQL "
        f"{cpu['auth']['PostgreSQL (all)']:.3f} vs {cpu['noauth']['PostgreSQL (all)']:.3f} ms; "
        f"Redis {cpu['auth']['Redis']:.3f} vs {cpu['noauth']['Redis']:.3f} ms"
    )
    path = results["auth_path_cpu_us"]
    cost_ms = (path["authenticate_us"] + path["rate_limit_us"]) / 1000
    say(
        f"  the auth path alone, in process: authenticate (cached key) "
        f"{path['authenticate_us']:.1f} us + rate limit (Redis) {path['rate_limit_us']:.1f} us "
        f"of CPU per request; against the auth-disabled request's {gw['noauth']:.3f} ms that "
        f"bounds the ratio at {ratio(gw['noauth'], gw['noauth'] + cost_ms):.2f}"
    )
    if any(results["errors"].values()):
        say(f"  non-200 answers: {results['errors']}")
    results["options"] = opts.__dict__
    results["machine"] = machine()
    results["source"] = source_state()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "auth.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    say(f"  (results in {out.relative_to(ROOT)}; {results['wall_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
