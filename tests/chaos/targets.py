"""Where the chaos run's faults land on arrays: which worker to kill (the ready one that runs
the most elements now), when to restart PostgreSQL (while an array's elements finish), and
afterwards what they hit, read from the database: element attempts that a kill ended (the
reaper's LOST row on the killed worker) and elements running across the restart."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.jobs.usage import LOST


@dataclass(frozen=True)
class Holder:
    process: str  # the cluster's name of the worker process (worker_01)
    worker: str  # its name in the database
    elements: int  # elements RUNNING on it


def pick_holder(
    ready: Sequence[str], pids: Mapping[str, int], running: Mapping[str, int]
) -> Holder | None:
    """The process of ``ready`` whose worker runs the most elements (``running``: worker name
    -> elements RUNNING on it), or None when none runs any. A worker's name ends in its pid
    (``tools.supervision.numbered_command``), so a name whose pid is gone (a worker killed
    before, its elements waiting for their leases to end) matches no process."""
    best: Holder | None = None
    for process in ready:
        pid = pids.get(process)
        for worker, n in running.items():
            mine = pid is not None and worker.endswith(f"-{pid}")
            if mine and (best is None or n > best.elements):
                best = Holder(process, worker, n)
    return best


@dataclass
class ArrayHits:
    """What the faults did to elements."""

    kills_on_elements: int = 0  # worker kills while the worker ran elements
    held: int = 0  # elements those workers ran when they were killed
    interrupted: int = 0  # element attempts a worker kill ended (LOST on a killed worker)
    across_restart: int = 0  # element attempts running before PostgreSQL stopped, ended after
    recorded_after_restart: int = 0  # of those, SUCCEEDED: the worker's record came through
    killed_workers: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"worker kills on elements {self.kills_on_elements} ({self.held} elements held), "
            f"element attempts they ended {self.interrupted}; elements running across the "
            f"PostgreSQL restart {self.across_restart} "
            f"({self.recorded_after_restart} recorded SUCCEEDED after it)"
        ]


# Elements run as rows (RUNNING on a worker) or in chunks (a chunk a worker holds: its
# elements have no row until they end).
_RUNNING = text(
    "SELECT worker, sum(n) FROM ("
    " SELECT worker, count(*) AS n FROM jobs WHERE tenant_id = ANY(:t)"
    " AND array_id IS NOT NULL AND state = 'RUNNING' AND worker IS NOT NULL GROUP BY worker"
    " UNION ALL SELECT worker, sum(n) FROM array_chunks WHERE tenant_id = ANY(:t)"
    " AND worker IS NOT NULL GROUP BY worker) s GROUP BY worker"
)
_LIVE = text(
    "SELECT (SELECT count(*) FROM jobs WHERE tenant_id = ANY(:t) AND array_id IS NOT NULL"
    " AND state IN ('QUEUED', 'RUNNING'))"
    " + (SELECT coalesce(sum(n), 0) FROM array_chunks WHERE tenant_id = ANY(:t))"
)


async def running_elements(engine: AsyncEngine, tenant_ids: list[uuid.UUID]) -> dict[str, int]:
    """Worker name -> the run's elements RUNNING on it ({} while the database is away)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5), engine.connect() as conn:
            rows = await conn.execute(_RUNNING, {"t": tenant_ids})
            return {str(w): int(n) for w, n in rows.all()}
    return {}


async def elements_live(engine: AsyncEngine, tenant_ids: list[uuid.UUID]) -> bool:
    """Whether an element of the run is queued or running (False while the database is
    away)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5), engine.connect() as conn:
            return bool(await conn.scalar(_LIVE, {"t": tenant_ids}))
    return False


async def wait_elements_finishing(
    engine: AsyncEngine, array_id: uuid.UUID, timeout: float = 120
) -> bool:
    """Until the array has an element SUCCEEDED and another RUNNING: its records are being
    written. False when that was not seen in ``timeout`` (the array ran too fast, or not)."""
    deadline = time.monotonic() + timeout
    sql = text("SELECT n_succeeded, n_running FROM job_arrays WHERE job_id = :a")
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5), engine.connect() as conn:
                row = (await conn.execute(sql, {"a": array_id})).first()
            if row is not None and row[0] >= 1 and row[1] >= 1:
                return True
        await asyncio.sleep(0.05)
    return False


async def count_hits(
    conn: AsyncConnection,
    tenant_ids: list[uuid.UUID],
    hits: ArrayHits,
    restart: tuple[float, float] | None,
) -> None:
    """Fill in what the kills (``hits.killed_workers``) and the PostgreSQL restart
    (``restart``: its start and end, epoch seconds) did to the run's elements."""
    hits.interrupted = int(
        await conn.scalar(
            text(
                "SELECT count(*) FROM attempt_records u JOIN jobs j ON j.id = u.job_id "
                "WHERE j.tenant_id = ANY(:t) AND j.array_id IS NOT NULL "
                "AND u.outcome = :lost AND (u.worker = ANY(:w) "
                # a chunk's lost attempt, counted when its element is recorded later: the
                # worker that held it is not kept (only a lost worker loses a chunk here)
                "OR (u.worker IS NULL AND u.attempt < j.attempts))"
            ),
            {"t": tenant_ids, "lost": LOST, "w": hits.killed_workers},
        )
        or 0
    )
    if restart is None:
        return
    row = (
        await conn.execute(
            text(
                # an element in flight across the restart, from its row (chunk elements have
                # no history): queued (its chunk cut, or its row made) before the restart,
                # recorded (its row written) after it
                "SELECT count(*), count(*) FILTER (WHERE j.state = 'SUCCEEDED') "
                "FROM jobs j WHERE j.tenant_id = ANY(:t) AND j.array_id IS NOT NULL "
                "AND j.queued_at < to_timestamp(:start) "
                "AND j.updated_at > to_timestamp(:end)"
            ),
            {"t": tenant_ids, "start": restart[0], "end": restart[1]},
        )
    ).one()
    hits.across_restart, hits.recorded_after_restart = int(row[0]), int(row[1])
