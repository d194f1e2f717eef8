"""What the chaos suite checks once the cluster is quiet, read straight from PostgreSQL and
the broker: every job final and SUCCEEDED, no double outcome, usage once per attempt (its
hourly sums too), every output published, the outbox and the dead-letter queues empty; and
the arrays (``array_checks``). A job here is a single job or an element of an array: an
array's own row is checked with the arrays."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.chaos.array_checks import ArrayFindings, collect_arrays

FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


@dataclass
class Findings:
    submitted: int = 0  # single jobs and array elements
    stored: int = 0  # jobs of the run's tenants in the database (duplicates would show here)
    by_state: dict[str, int] = field(default_factory=dict)
    attempts: int = 0  # attempts started, all jobs
    double_outcomes: list[str] = field(default_factory=list)  # jobs with > 1 final event
    double_results: list[str] = field(default_factory=list)  # > 1 SUCCEEDED attempt
    result_not_last: list[str] = field(default_factory=list)  # SUCCEEDED, not its last attempt
    inconsistent_results: list[str] = field(default_factory=list)  # same inputs, other result
    usage_missing: int = 0  # attempts that ended but were never counted
    usage_extra: int = 0  # usage rows for attempts that never started
    usage_rows: int = 0
    usage_hours_wrong: list[str] = field(default_factory=list)  # != GROUP BY attempt_records
    outputs_missing: list[str] = field(default_factory=list)
    outbox: int = 0
    queues: dict[str, int] = field(default_factory=dict)  # broker queue -> messages
    migrations: dict[str, int] = field(default_factory=dict)
    arrays: ArrayFindings = field(default_factory=ArrayFindings)

    @property
    def final(self) -> int:
        return sum(n for s, n in self.by_state.items() if s in FINAL)

    @property
    def succeeded(self) -> int:
        return self.by_state.get("SUCCEEDED", 0)

    @property
    def lost(self) -> int:
        return self.submitted - self.final

    @property
    def dead_letters(self) -> dict[str, int]:
        return {q: n for q, n in self.queues.items() if q.endswith(".dlq") and n}

    @property
    def waiting_messages(self) -> dict[str, int]:
        return {q: n for q, n in self.queues.items() if not q.endswith(".dlq") and n}

    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{self.lost} jobs not in a final state")
        if self.succeeded != self.submitted:
            found.append(f"SUCCEEDED {self.succeeded} != submitted {self.submitted}")
        if self.stored != self.submitted:
            found.append(f"{self.stored} jobs stored for {self.submitted} submitted")
        if self.double_outcomes:
            found.append(f"jobs with two outcomes: {self.double_outcomes[:5]}")
        if self.double_results:
            found.append(f"jobs with two SUCCEEDED attempts: {self.double_results[:5]}")
        if self.result_not_last:
            found.append(f"results of an attempt not the last: {self.result_not_last[:5]}")
        if self.inconsistent_results:
            found.append(f"different results for the same inputs: {self.inconsistent_results}")
        if self.usage_missing or self.usage_extra:
            found.append(
                f"usage: {self.usage_missing} attempts uncounted, {self.usage_extra} extra"
            )
        if self.usage_hours_wrong:
            found.append(f"usage_hours not the sums of the attempts: {self.usage_hours_wrong[:5]}")
        if self.outputs_missing:
            found.append(f"outputs missing: {self.outputs_missing[:5]}")
        if self.outbox:
            found.append(f"outbox holds {self.outbox} events")
        if self.dead_letters:
            found.append(f"dead letters: {self.dead_letters}")
        if self.waiting_messages:
            found.append(f"messages left in queues: {self.waiting_messages}")
        if set(self.migrations) - {"SUCCEEDED"}:
            found.append(f"migrations not SUCCEEDED: {self.migrations}")
        return found + self.arrays.problems()


async def _scalar(session: AsyncConnection, sql: str, **params: Any) -> int:
    return int(await session.scalar(text(sql), params) or 0)


async def collect(
    session: AsyncConnection,
    tenant_ids: list[uuid.UUID],
    submitted: int,
    queues: dict[str, int],
    *,
    arrays: int = 0,
) -> Findings:
    """The findings of a run whose tenants are ``tenant_ids``, which submitted ``submitted``
    jobs (single jobs and elements) of which ``arrays`` arrays; ``queues``: the broker's
    queues and the messages in each."""
    tids = tenant_ids
    f = Findings(submitted=submitted, queues=queues)
    rows = await session.execute(
        text(
            "SELECT state, count(*), sum(attempts) FROM jobs WHERE tenant_id = ANY(:t) "
            "AND NOT is_array GROUP BY state"
        ),
        {"t": tids},
    )
    for state, n, attempts in rows.all():
        f.by_state[state] = int(n)
        f.stored += int(n)
        f.attempts += int(attempts or 0)
    await check_outcomes(session, tids, f)
    await check_usage(session, tids, f)
    missing = await session.execute(
        text(
            "SELECT j.id, o.value FROM jobs j, jsonb_each_text(j.outputs) o "
            "WHERE j.tenant_id = ANY(:t) AND j.state = 'SUCCEEDED' AND NOT j.is_array "
            "AND NOT EXISTS (SELECT 1 FROM datasets d WHERE d.tenant_id = j.tenant_id "
            "AND d.name = o.value)"
        ),
        {"t": tids},
    )
    f.outputs_missing = [f"{job}: {name}" for job, name in missing.all()]
    f.outbox = await _scalar(session, "SELECT count(*) FROM outbox")
    migrations = await session.execute(
        text("SELECT state, count(*) FROM migrations WHERE tenant_id = ANY(:t) GROUP BY state"),
        {"t": tids},
    )
    f.migrations = {state: int(n) for state, n in migrations.all()}
    f.arrays = await collect_arrays(session, tids, arrays)
    return f


async def check_outcomes(session: AsyncConnection, tids: list[uuid.UUID], f: Findings) -> None:
    """Each job ended once, with the result of its last attempt, the same result as any
    other job of the same kernel and params."""
    doubles = await session.execute(
        text(
            "SELECT e.job_id, string_agg(e.to_state || '@' || e.attempt, ',') FROM job_events e "
            "JOIN jobs j ON j.id = e.job_id WHERE j.tenant_id = ANY(:t) "
            "AND e.kind = 'state' AND e.to_state = ANY(:final) "
            "GROUP BY e.job_id HAVING count(*) > 1"
        ),
        {"t": tids, "final": list(FINAL)},
    )
    f.double_outcomes = [f"{job}: {states}" for job, states in doubles.all()]
    results = await session.execute(
        text(
            "SELECT job_id, string_agg(attempt::text, ',') FROM attempt_records "
            "WHERE tenant_id = ANY(:t) AND outcome = 'SUCCEEDED' GROUP BY job_id "
            "HAVING count(*) > 1"
        ),
        {"t": tids},
    )
    f.double_results = [f"{job}: attempts {attempts}" for job, attempts in results.all()]
    not_last = await session.execute(
        text(
            "SELECT j.id, j.attempts, u.outcome FROM jobs j LEFT JOIN attempt_records u "
            "ON u.job_id = j.id AND u.attempt = j.attempts WHERE j.tenant_id = ANY(:t) "
            "AND j.state = 'SUCCEEDED' AND NOT j.is_array "
            "AND u.outcome IS DISTINCT FROM 'SUCCEEDED'"
        ),
        {"t": tids},
    )
    f.result_not_last = [f"{job}: attempt {n} {outcome}" for job, n, outcome in not_last.all()]
    # the same kernel on the same inputs and params gives the same result, whoever ran it
    # (an element and a single job alike)
    results = await session.execute(
        text(
            "SELECT kernel, params::text, count(DISTINCT result::text) FROM jobs "
            "WHERE tenant_id = ANY(:t) AND state = 'SUCCEEDED' AND NOT is_array "
            "AND kernel IN ('histogram', 'montecarlo_pi', 'nbody') GROUP BY 1, 2 "
            "HAVING count(DISTINCT result::text) > 1"
        ),
        {"t": tids},
    )
    f.inconsistent_results = [f"{k} {p}: {n} results" for k, p, n in results.all()]


# Each tenant's hourly usage buckets beside the same sums over its attempts: the rows where
# the two differ (a bucket without attempts, or attempts without their bucket, included).
_HOURS = text(
    """
    SELECT coalesce(b.tenant_id, g.tenant_id), coalesce(b.hour, g.hour),
           b.attempts, g.attempts, b.cpu_seconds, g.cpu_seconds
    FROM (SELECT * FROM usage_hours WHERE tenant_id = ANY(:t)) b
    FULL JOIN (
        SELECT tenant_id, date_trunc('hour', finished_at, 'UTC') AS hour,
               count(*) AS attempts, sum(cpu_seconds) AS cpu_seconds,
               sum(gpu_seconds) AS gpu_seconds
        FROM attempt_records WHERE tenant_id = ANY(:t) GROUP BY 1, 2
    ) g ON g.tenant_id = b.tenant_id AND g.hour = b.hour
    WHERE b.attempts IS DISTINCT FROM g.attempts
       OR abs(coalesce(b.cpu_seconds, 0) - coalesce(g.cpu_seconds, 0)) > 1e-6
       OR abs(coalesce(b.gpu_seconds, 0) - coalesce(g.gpu_seconds, 0)) > 1e-6
    """
)


async def check_usage(session: AsyncConnection, tids: list[uuid.UUID], f: Findings) -> None:
    """Every attempt that started (1..attempts) ended once, by the worker's record or by
    the reaper, with exactly one usage record (``attempt_records``: a ``job_attempts`` row
    or an entry of a chunk flush's ``chunk_attempts`` row); the hourly buckets are its sums."""
    started = await session.execute(
        text("SELECT id, attempts FROM jobs WHERE tenant_id = ANY(:t)"), {"t": tids}
    )
    expected = {(job, k) for job, n in started.all() for k in range(1, n + 1)}
    usage_sql = (
        "SELECT u.job_id, u.attempt FROM attempt_records u JOIN jobs j ON j.id = u.job_id "
        "WHERE j.tenant_id = ANY(:t)"
    )
    counted = {(r[0], r[1]) for r in (await session.execute(text(usage_sql), {"t": tids})).all()}
    f.usage_rows = len(counted)
    f.usage_missing = len(expected - counted)
    f.usage_extra = len(counted - expected)
    hours = await session.execute(_HOURS, {"t": tids})
    f.usage_hours_wrong = [
        f"{tenant} {hour:%Y-%m-%d %H}h: buckets {b_n} attempts {b_cpu} cpu s, "
        f"attempts {g_n} and {g_cpu} cpu s"
        for tenant, hour, b_n, g_n, b_cpu, g_cpu in hours.all()
    ]
