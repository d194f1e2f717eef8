"""Long checkpointing jobs in the chaos run: a few ``montecarlo_pi`` jobs of several seconds
that save a checkpoint every ``INTERVAL_S``, each of whose workers is killed (SIGKILL) between
two of its checkpoints, once it has saved one (``kill_each``); they run among the rest of the
workload and its faults.

Once the run is quiet (``check``), from the job's rows, its checkpoint events and its attempts:
each SUCCEEDED with the uninterrupted run's estimate, bit for bit; every attempt after the
first that ran after a checkpoint resumed from the last checkpoint any attempt before it saved
(nothing saved is computed twice); an attempt killed here had saved a checkpoint at most
``INTERVAL_S`` plus ``BLOCK_SLACK_S`` before its kill (what its kill lost, and the next
attempt computes again, is bounded by the interval); the job's ``checkpoints`` counts every
save of every attempt, the killed ones' too."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.chaos.workload import JobSpec, Tenant

COUNT = 3  # long jobs in a run
FIRST_INDEX = 1_000_000  # their specs' indices (idempotency keys), apart from the mix's
INTERVAL_S = 1  # their checkpoint_interval_s
# about 4 s of one pool thread on a quiet host, long enough on any to be killed between two
# checkpoints once it has saved one
SAMPLES = 2_000_000_000
# A checkpoint comes at the end of the first block (about 0.25 s, longer on a loaded host)
# after the interval: the most an attempt may run after its last checkpoint, beyond the
# interval, before its kill
BLOCK_SLACK_S = 2.0
KILL_AFTER_S = 0.6  # after a checkpoint event is seen: between it and the next one
WAIT_S = 240.0  # for a long job to save its first checkpoint (the run's faults delay it)


def specs(tenants: list[Tenant]) -> list[JobSpec]:
    return [
        JobSpec(
            FIRST_INDEX + k,
            tenants[k % len(tenants)],
            {
                "kernel": "montecarlo_pi",
                "device": "cpu",
                "params": {"samples": SAMPLES, "seed": 100 + k},
                "checkpoint_interval_s": INTERVAL_S,
                "timeout_s": 600,
                "max_retries": 20,
                "labels": {"chaos": "long"},
            },
        )
        for k in range(COUNT)
    ]


def uninterrupted(k: int) -> dict[str, Any]:
    from services.worker.kernels import montecarlo

    result: dict[str, Any] = montecarlo.estimate(SAMPLES, 100 + k)
    return result


@dataclass
class Kill:
    job_id: str
    attempt: int
    at: float  # epoch seconds, just before the SIGKILL


@dataclass
class LongFindings:
    jobs: int = 0
    kills: list[Kill] = field(default_factory=list)
    lost_s: list[float] = field(default_factory=list)  # each kill's time since a checkpoint
    resumes: int = 0
    problems_found: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = list(self.problems_found)
        if self.jobs and not self.kills:
            found.append("no long job was killed between two checkpoints")
        return found

    def lines(self) -> list[str]:
        if not self.jobs:
            return []
        lost = ", ".join(f"{s:.2f}" for s in self.lost_s) or "none"
        return [
            f"long jobs {self.jobs} (checkpoint every {INTERVAL_S} s): {len(self.kills)} "
            f"killed between checkpoints, computing lost per kill {lost} s "
            f"(bound {INTERVAL_S + BLOCK_SLACK_S:.1f} s), {self.resumes} resumes"
        ]


_LAST_SAVE = text(
    "SELECT j.attempts, j.worker, j.state, max(e.at) FILTER (WHERE e.attempt = j.attempts) "
    "FROM jobs j LEFT JOIN job_events e ON e.job_id = j.id AND e.kind = 'checkpoint' "
    "AND e.reason = 'saved' WHERE j.id = :id GROUP BY j.id"
)


async def kill_each(
    engine: AsyncEngine,
    ids: list[str],
    kill: Callable[[str], Awaitable[bool]],
    kills: list[Kill],
) -> None:
    """Kill the worker of each job of ``ids`` once, ``KILL_AFTER_S`` after its running
    attempt's first checkpoint event (``kill(worker)``: whether it killed it)."""
    for job_id in ids:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            row = None
            try:
                async with asyncio.timeout(5), engine.connect() as conn:
                    row = (await conn.execute(_LAST_SAVE, {"id": uuid.UUID(job_id)})).first()
            except Exception:
                row = None  # the database restarts: look again
            if row is not None and row[2] in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
                break  # done before a kill found it (the check says if none was killed)
            if row is not None and row[2] == "RUNNING" and row[3] is not None and row[1]:
                await asyncio.sleep(KILL_AFTER_S)
                at = time.time()
                if await kill(str(row[1])):
                    kills.append(Kill(job_id, int(row[0]), at))
                break
            await asyncio.sleep(0.1)


async def check(conn: AsyncConnection, ids: list[str], kills: list[Kill]) -> LongFindings:
    f = LongFindings(jobs=len(ids), kills=kills)
    by_attempt_kill = {(k.job_id, k.attempt): k for k in kills}
    for k, job_id in enumerate(ids):
        job = (
            await conn.execute(
                text("SELECT state, result, checkpoints, attempts FROM jobs WHERE id = :id"),
                {"id": uuid.UUID(job_id)},
            )
        ).first()
        if job is None or job[0] != "SUCCEEDED":
            f.problems_found.append(f"long job {job_id}: {job[0] if job else 'missing'}")
            continue
        if job[1] != uninterrupted(k):
            f.problems_found.append(f"long job {job_id}: {job[1]} != the uninterrupted run's")
        events = (
            await conn.execute(
                text(
                    "SELECT attempt, reason, step, extract(epoch FROM at) FROM job_events "
                    "WHERE job_id = :id AND kind = 'checkpoint' ORDER BY id"
                ),
                {"id": uuid.UUID(job_id)},
            )
        ).all()
        saves = [(int(a), int(s), float(t)) for a, r, s, t in events if r == "saved"]
        if job[2] != len(saves):
            f.problems_found.append(
                f"long job {job_id}: checkpoints {job[2]} != {len(saves)} saved"
            )
        for attempt, reason, step, _ in events:
            if reason != "resumed":
                continue
            f.resumes += 1
            # never from before the last save recorded, nor from one never recorded (a kill
            # between a checkpoint's rename and its record leaves it to the resume to record)
            before = [s for a, s, _ in saves if a < attempt]
            if not before or int(step) < before[-1]:
                f.problems_found.append(
                    f"long job {job_id}: attempt {attempt} resumed from {step}, "
                    f"the last checkpoint before it is {before[-1] if before else None}"
                )
        for attempt in range(1, int(job[3])):
            last = [t for a, _, t in saves if a == attempt]
            earlier = [s for a, s, _ in saves if a < attempt]
            later = [a for a, r, _, _ in events if r == "resumed" and a > attempt]
            if (last or earlier) and not later:
                f.problems_found.append(
                    f"long job {job_id}: no attempt after {attempt} resumed from a checkpoint"
                )
            kill = by_attempt_kill.get((job_id, attempt))
            if kill is None:
                continue
            if not last:
                f.problems_found.append(f"long job {job_id}: attempt {attempt} killed unsaved")
                continue
            lost = kill.at - max((t for t in last if t <= kill.at + 0.5), default=last[0])
            f.lost_s.append(lost)
            if lost > INTERVAL_S + BLOCK_SLACK_S:
                f.problems_found.append(
                    f"long job {job_id}: attempt {attempt} ran {lost:.2f} s past its last "
                    f"checkpoint before its kill (bound {INTERVAL_S + BLOCK_SLACK_S} s)"
                )
    return f
