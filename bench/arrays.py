"""The arrays phase of ``bench/pipeline.py``: parameter sweeps submitted as job arrays.

Two shapes of the same work, each from the first submit to the last element SUCCEEDED
(``max(finished_at)`` of the elements, polled with asyncpg), three repetitions, medians:

- one array of ``--array-size`` (2,000) trivial ``montecarlo_pi`` elements (samples 1,000,
  ``index_param`` seed);
- twenty arrays of 100 such elements, submitted by concurrent clients.

Beside the rate it prints the CPU time per element of every process group (gateway,
scheduler, worker, PostgreSQL, RabbitMQ) and PostgreSQL's row writes per element (inserted,
updated and deleted tuples from ``pg_stat_database``, the benchmark's own queries excluded).
The reference is Celery's rate from the end-to-end phase of the same run: Celery enqueues
one task per call, Stratus submits a whole sweep in one request.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx

from bench.cpu import describe, per_item_ms

if TYPE_CHECKING:
    from bench.pipeline import Env

# The figures the arrays phase is held to (rate over Celery's; per element).
TARGETS = {"ratio": 1.0, "ratio_goal": 1.5, "cpu_ms_per_element": 0.7, "row_writes": 2.0}
SHAPES = ((1, 2000), (20, 100))  # (arrays, elements each)


# CPU groups that are not the service's work: the whole machine, the benchmark itself.
NOT_SERVICE = frozenset({"machine", "load generator"})


def service_cpu_ms(per_element: dict[str, float]) -> float:
    """CPU ms per element across Stratus's processes, PostgreSQL and RabbitMQ."""
    return sum(v for k, v in per_element.items() if k not in NOT_SERVICE)


def array_body(size: int, seq: int) -> dict[str, Any]:
    return {
        "kernel": "montecarlo_pi",
        "params": {"samples": 1000},
        "labels": {"bench": f"sweep-{seq}"},
        "array": {"size": size, "index_param": "seed"},
    }


@dataclass
class Sweep:
    """One repetition of one shape."""

    arrays: int
    size: int
    submitted: int
    succeeded: int
    failed: int
    timed_out: bool
    submit_s: float
    elapsed_s: float
    cpu: dict[str, float]
    cpu_text: str
    row_writes: float
    db: dict[str, float]

    @property
    def elements(self) -> int:
        return self.arrays * self.size

    @property
    def per_s(self) -> float:
        return self.succeeded / self.elapsed_s if self.elapsed_s > 0 else math.nan


async def _submit(
    api: httpx.AsyncClient, headers: dict[str, str], arrays: int, size: int
) -> tuple[int, float]:
    """POST ``arrays`` arrays of ``size`` at once; (arrays accepted, time.time() of the first
    request's start)."""
    start = time.time()

    async def one(seq: int) -> bool:
        r = await api.post("/v1/jobs", json=array_body(size, seq), headers=headers)
        if r.status_code != 201:
            print(f"          array submit {seq}: HTTP {r.status_code} {r.text[:200]}")
        return r.status_code == 201

    done = await asyncio.gather(*(one(i) for i in range(arrays)))
    return sum(done), start


async def _wait_elements(
    db: asyncpg.Connection, tenant_id: str, expected: int, timeout: float
) -> tuple[int, int, float | None, bool, int]:
    """Poll the tenant's arrays' counts until ``expected`` elements are final: (succeeded,
    failed, time.time() of the last element's end, timed out, polls made)."""
    counts = """
        SELECT coalesce(sum(n_succeeded), 0) AS ok,
               coalesce(sum(n_failed + n_cancelled + n_timed_out), 0) AS bad
        FROM job_arrays WHERE tenant_id = $1::uuid
    """
    last = """
        SELECT max(finished_at) FROM jobs
        WHERE tenant_id = $1::uuid AND array_id IS NOT NULL
    """
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        row = await db.fetchrow(counts, tenant_id)
        polls += 1
        assert row is not None
        ok, bad = int(row["ok"]), int(row["bad"])
        if ok + bad >= expected or time.monotonic() > deadline:
            finished = await db.fetchval(last, tenant_id)
            polls += 1
            end = finished.timestamp() if finished is not None else None
            return ok, bad, end, ok + bad < expected, polls
        await asyncio.sleep(0.05)


async def sweep(
    env: Env, db: asyncpg.Connection, name: str, arrays: int, size: int, limit_s: float
) -> Sweep:
    from bench.pipeline import db_counters, new_tenant, stratus_meter

    tenant_id, headers = await new_tenant(env, name)
    meter = stratus_meter(env, "gateway", "scheduler", "worker")
    counters0 = await db_counters(db)
    async with httpx.AsyncClient(base_url=env.gateway, timeout=60) as api:
        meter.start()
        t0 = time.perf_counter()
        accepted, first = await _submit(api, headers, arrays, size)
        submit_s = time.perf_counter() - t0
    ok, bad, end, timed_out, polls = await _wait_elements(
        db, tenant_id, accepted * size, max(5.0, limit_s - submit_s)
    )
    cpu = meter.stop()
    await asyncio.sleep(1.2)  # let the servers' backends publish their statistics
    counters1 = await db_counters(db)
    work = {k: counters1[k] - counters0[k] for k in counters0}
    work["transactions"] -= polls + 1  # the benchmark's own queries
    per = {k: v / ok for k, v in work.items()} if ok else {}
    writes = sum(per.get(k, 0.0) for k in ("rows_inserted", "rows_updated", "rows_deleted"))
    elapsed = (end or time.time()) - first
    return Sweep(
        arrays=arrays,
        size=size,
        submitted=accepted,
        succeeded=ok,
        failed=bad,
        timed_out=timed_out,
        submit_s=submit_s,
        elapsed_s=elapsed,
        cpu=per_item_ms(cpu, ok),
        cpu_text=describe(cpu, ok, elapsed),
        row_writes=writes,
        db=per,
    )


async def phase_arrays(env: Env, db: asyncpg.Connection, celery_per_s: float) -> dict[str, Any]:
    from bench.pipeline import RESERVE_AFTER_E2E, mark, median, ratio, say

    o = env.opts
    say()
    say(
        f"[2b] Arrays: {' and '.join(f'{a} x {s}' for a, s in SHAPES)} montecarlo_pi elements "
        f"(samples=1000, index_param seed), first submit -> last element SUCCEEDED, "
        f"{o.repeat} repetition(s); reference: Celery's rate from [2] (one task per call, "
        "where Stratus submits a sweep in one request)"
    )
    shapes: dict[str, Any] = {}
    for arrays, size in SHAPES:
        key = f"{arrays}x{size}"
        runs: list[Sweep] = []
        for rep in range(o.repeat):
            if rep > 0 and env.budget.left() - runs[-1].elapsed_s - 5 < RESERVE_AFTER_E2E:
                say(f"    (stopping {key} after {rep} repetition(s): time bound)")
                break
            limit = env.budget.allow(RESERVE_AFTER_E2E, 20.0, 150.0)
            r = await sweep(env, db, f"bench-arrays-{key}-{rep}", arrays, size, limit)
            runs.append(r)
            say(
                f"    rep {rep + 1} {key}: {r.per_s:7.1f} elements/s ({r.succeeded} SUCCEEDED, "
                f"{r.failed} not, of {r.elements} in {r.elapsed_s:.2f} s; the submit took "
                f"{r.submit_s * 1000:.0f} ms{'; TIMED OUT' if r.timed_out else ''})"
            )
            say(f"          CPU per element: {r.cpu_text}")
            say(
                f"          PostgreSQL row writes per element: {r.row_writes:.2f} ("
                + ", ".join(f"{v:.2f} {k.replace('_', ' ')}" for k, v in r.db.items())
                + ")"
            )
        rate = median([r.per_s for r in runs])
        cpu_total = median([service_cpu_ms(r.cpu) for r in runs])
        writes = median([r.row_writes for r in runs])
        q = ratio(rate, celery_per_s)
        say(
            f"  => {key}: median {rate:.1f} elements/s, ratio {q:.2f} to Celery "
            f"(target >= {TARGETS['ratio']}: {mark(q >= TARGETS['ratio'], q)}; goal "
            f"{TARGETS['ratio_goal']}); CPU {cpu_total:.2f} ms/element (target <= "
            f"{TARGETS['cpu_ms_per_element']}: "
            f"{mark(cpu_total <= TARGETS['cpu_ms_per_element'], cpu_total)}); row writes "
            f"{writes:.2f}/element (target <= {TARGETS['row_writes']}: "
            f"{mark(writes <= TARGETS['row_writes'], writes)})"
        )
        shapes[key] = {
            "runs": [r.__dict__ | {"per_s": r.per_s} for r in runs],
            "median_per_s": rate,
            "ratio": q,
            "cpu_ms_per_element": cpu_total,
            "row_writes_per_element": writes,
        }
    return {"celery_median_per_s": celery_per_s, "shapes": shapes, "targets": TARGETS}


def summary_rows(a: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The arrays phase's rows of the pipeline's summary table."""
    rows: list[tuple[Any, ...]] = []
    for key, s in a["shapes"].items():
        q = s["ratio"]
        rows.append(
            (f"array {key} elements/s", s["median_per_s"], a["celery_median_per_s"], q,
             f">= {TARGETS['ratio']:g}", q >= TARGETS["ratio"], q)
        )  # fmt: skip
        cpu = s["cpu_ms_per_element"]
        rows.append(
            (f"array {key} CPU ms/elem", cpu, math.nan, math.nan,
             f"<= {TARGETS['cpu_ms_per_element']:g}", cpu <= TARGETS["cpu_ms_per_element"], cpu)
        )  # fmt: skip
        w = s["row_writes_per_element"]
        rows.append(
            (f"array {key} row writes", w, math.nan, math.nan,
             f"<= {TARGETS['row_writes']:g}", w <= TARGETS["row_writes"], w)
        )  # fmt: skip
    return rows
