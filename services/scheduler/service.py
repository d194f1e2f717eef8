"""Scheduler use cases: admission, capacity-bounded priority dispatch, lease reaping.

The dispatch pass (``admit`` then ``dispatch``) runs on every wake-up, that is after nearly
every job event, so it is fixed SQL on plain asyncpg inside one transaction (``open_pass``):
a handful of prepared statements per pass instead of SQLAlchemy statements built, compiled
and cached anew each time. The rare steps that need the shared library's session functions
(stage-in requests, failing a job) run in a SQLAlchemy session on the same connection, a
savepoint inside the pass's transaction. The reaper's use cases (``requeue_lost``,
``redispatch_unclaimed``, ``forget_workers``, ``explain_waiting``), on a slow interval, take
``session`` as a keyword. Nothing here commits; events go to the outbox in the same
transaction, except a pass's job dispatches when it is opened with ``stage_dispatches``
off: those it collects (``Pass.to_publish``) for the caller to publish once it commits.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from services.scheduler import runnable
from services.scheduler.chunks import send_chunks
from services.scheduler.fairshare import Candidate, allocate
from shared import tracing
from shared.db.engine import SET_LOCAL_GENERIC_PLANS
from shared.db.models import Job, Worker
from shared.db.raw import pooled_connection
from shared.db.wakeup import FINISHED, notify
from shared.events import Event, JobDispatched
from shared.jobs.materialise import materialise_chunks, materialise_elements
from shared.jobs.proposals import Lost
from shared.jobs.states import JobState
from shared.jobs.store import admit_pending, set_job_state
from shared.jobs.usage import IN_FLIGHT, LostAttempt, record_lost_attempts
from shared.logging import get_logger
from shared.settings import QuotaDefaults
from shared.storage.stagein import fail_stage_in, request_stage_ins

log = get_logger(__name__)

Device = Literal["cuda", "cpu"]
DEVICES: tuple[Device, ...] = (
    "cuda",
    "cpu",
)  # GPU first, so that ``any`` jobs land on a GPU when one is free


class Pass:
    """One dispatch pass's connection, in one transaction: ``conn`` is the plain asyncpg
    connection for the fixed statements; ``session()`` opens a SQLAlchemy session on the same
    connection for the rare session-based step (its transaction is a savepoint of the pass's:
    asyncpg nests it), so everything the pass does commits or rolls back together."""

    def __init__(
        self,
        conn: Any,
        sa_conn: AsyncConnection,
        sessions: async_sessionmaker[AsyncSession],
        *,
        stage_dispatches: bool = True,
    ) -> None:
        self.conn = conn
        self._sa_conn = sa_conn
        self._sessions = sessions
        # False: the jobs' dispatch events are not staged in the outbox but collected here,
        # for the caller to publish after the commit (``shared.db.outbox.publish_or_stage``)
        self.stage_dispatches = stage_dispatches
        self.to_publish: list[Event] = []

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions(bind=self._sa_conn) as session, session.begin():
            yield session


@asynccontextmanager
async def open_pass(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    *,
    stage_dispatches: bool = True,
) -> AsyncIterator[Pass]:
    """A connection from ``engine``'s pool in a transaction that commits when the block ends
    (rolls back on an exception); ``sessions`` makes the pass's sessions. The pass's fixed
    statements reuse their generic plans (``shared.db.engine.GENERIC_PLANS``): planned for
    the values at hand, the candidates statement was planned again at most passes, at several
    times the cost of running it."""
    async with pooled_connection(engine) as (sa_conn, conn), conn.transaction():
        await conn.execute(SET_LOCAL_GENERIC_PLANS)
        yield Pass(conn, sa_conn, sessions, stage_dispatches=stage_dispatches)


# Whether any array has elements left to materialise (``ix_job_arrays_open``): both
# materialise statements select only such arrays, and each costs the database far more than
# this probe even when it finds none (its statement triggers on ``jobs`` fire regardless).
_ANY_OPEN_ARRAY = (
    "SELECT EXISTS (SELECT 1 FROM job_arrays WHERE NOT cancelled AND next_index < size)"
)


async def materialise(
    engine: AsyncEngine,
    *,
    window: int,
    limit: int,
    chunk_target_s: float | None = None,
    chunk_max: int = 256,
) -> int:
    """Before the pass: the next elements of open arrays become ``jobs`` rows (QUEUED, or
    PENDING for admission when they read datasets), at most ``window`` live per array and
    ``limit`` in all (``shared.jobs.materialise``). One statement, a transaction of its own
    (the connection is in autocommit): the arrays' rows it locks are the ones every
    element's state change updates (the counts' trigger), so they are held for one
    statement, not for the whole pass. With ``chunk_target_s``, the arrays whose elements
    read and write no datasets get ``array_chunks`` rows instead, sized for about that many
    seconds each (``materialise_chunks``), in a statement of their own before."""
    async with pooled_connection(engine) as (_, conn):
        if not await conn.fetchval(_ANY_OPEN_ARRAY):
            return 0  # the common case without arrays: one index probe, not two statements
        chunked = chunk_target_s is not None
        if chunk_target_s is not None:
            await materialise_chunks(
                conn.fetch,
                window=window,
                limit=limit,
                target_s=chunk_target_s,
                chunk_max=chunk_max,
            )
        return await materialise_elements(conn.fetch, window=window, limit=limit, chunked=chunked)


async def admit(db: Pass, *, limit: int, tiers: list[str]) -> int:
    """The dispatch pass's first step: PENDING -> QUEUED for up to ``limit`` jobs, oldest
    first, and the stage-in of their inputs that are not on ``local`` requested (such a job
    waits until they are)."""
    admitted = await admit_pending(db.conn.fetch, limit=limit)
    staging = [job for job in admitted if job.inputs]
    if staging:
        async with db.session() as session:
            for job in staging:
                await request_stage_ins(session=session, admitted=job, tiers=tiers)
    return len(admitted)


@dataclass(frozen=True)
class Capacity:
    slots: dict[str, int]
    in_flight: dict[str, int]
    # per device, how many jobs may be in flight: each live worker's slots times one plus
    # its slack (``Ahead``)
    room: dict[str, float] = field(default_factory=dict)

    def free(self, device: str, slack: float) -> int:
        slots = self.slots.get(device, 0)
        return max(0, math.ceil(slots * (1 + slack)) - self.in_flight.get(device, 0))

    def ahead(self, device: str) -> int:
        """How many more jobs may be sent to ``device``: its ``room`` less those in flight."""
        room = math.ceil(self.room.get(device, 0.0) - 1e-9)
        return max(0, room - self.in_flight.get(device, 0))


@dataclass(frozen=True)
class Ahead:
    """How far ahead of the workers' slots the scheduler dispatches. Each live worker takes
    ``concurrency * (1 + s)`` jobs in flight, where ``s`` is ``slack``, or, while the jobs
    it ran lately were short (``workers.run_s``, from its heartbeat), enough to keep its slots
    busy for ``ahead_s`` (``ahead_s / run_s``), at most ``slack_max``: a pass comes at most
    every ``STRATUS_DISPATCH_MIN_GAP_S``, and short jobs would leave the slots idle until it
    does. Long jobs keep ``slack``: what waits in a work queue is out of fair share's reach
    until it runs."""

    slack: float = 4.0
    slack_max: float = 4.0
    ahead_s: float = 0.0


# Live worker slots per device (heartbeat younger than $1 seconds, not stopping) and the jobs
# that hold one (QUEUED and dispatched, or RUNNING; an array's own row never is; an array
# chunk dispatched or claimed holds one), in one round trip. The jobs are read from
# ``ix_jobs_in_flight``, whose condition is ``IN_FLIGHT``: never the waiting backlog.
# With the slots, each device's room ($2 slack, $3 slack_max, $4 ahead_s: ``Ahead``).
_CAPACITY = f"""
SELECT true, device, sum(concurrency)::int,
       sum(concurrency * (1 + greatest($2::float8, least($3::float8,
           $4::float8 / greatest(coalesce(run_s, 'Infinity'), 1e-4)))))
FROM workers
WHERE heartbeat_at > now() - make_interval(secs => $1::float8) AND NOT stopping
GROUP BY device
UNION ALL
SELECT false, assigned_device, count(*)::int, 0 FROM jobs
WHERE {IN_FLIGHT} AND assigned_device IS NOT NULL
GROUP BY assigned_device
UNION ALL
SELECT false, device, count(*)::int, 0 FROM array_chunks WHERE device IS NOT NULL GROUP BY device
"""  # noqa: S608 (built from constants only)


def _capacity(rows: Iterable[Sequence[Any]]) -> Capacity:
    slots: dict[str, int] = {}
    in_flight: dict[str, int] = {}
    room: dict[str, float] = {}
    for is_slots, device, n, device_room in rows:
        counts = slots if is_slots else in_flight
        counts[str(device)] = counts.get(str(device), 0) + int(n)
        if is_slots:
            room[str(device)] = float(device_room)
    return Capacity(slots=slots, in_flight=in_flight, room=room)


def _capacity_args(worker_ttl_s: float, ahead: Ahead) -> tuple[float, float, float, float]:
    return (worker_ttl_s, ahead.slack, max(ahead.slack, ahead.slack_max), ahead.ahead_s)


async def capacity(conn: Any, *, worker_ttl_s: float, ahead: Ahead | None = None) -> Capacity:
    """Live slots, their room and jobs in flight per device, on the plain asyncpg connection
    ``conn``."""
    return _capacity(await conn.fetch(_CAPACITY, *_capacity_args(worker_ttl_s, ahead or Ahead())))


async def session_capacity(
    *, session: AsyncSession, worker_ttl_s: float, ahead: Ahead | None = None
) -> Capacity:
    """``capacity`` in a SQLAlchemy session (the same statement, given to the driver as is)."""
    conn = await session.connection()
    args = _capacity_args(worker_ttl_s, ahead or Ahead())
    return _capacity((await conn.exec_driver_sql(_CAPACITY, args)).all())


@dataclass(frozen=True)
class FairShareSettings:
    quota_defaults: QuotaDefaults = field(default_factory=QuotaDefaults)
    half_life_s: float = 3600.0
    usage_scale_s: float = 60.0
    reserved_slots: int = 1


async def dispatch(
    db: Pass,
    *,
    worker_ttl_s: float,
    slack: float,
    batch: int,
    fair: FairShareSettings | None = None,
    slack_max: float | None = None,
    ahead_s: float = 0.0,
) -> list[Event]:
    """Fill the free worker slots of each device with waiting jobs, shared fairly between
    tenants (``fairshare.allocate``), and as many beyond them as ``Ahead`` (``slack``, up to
    ``slack_max`` for short jobs) allows. Jobs that cannot go anywhere get a
    ``state_reason``.

    Round trips: one for capacity; then, per device with free slots, one for the candidates
    with their tenants' loads, one to send the chosen (lock, mark, stage the events), and one
    more only when a quota keeps some tenant's jobs waiting."""
    fair = fair or FairShareSettings()
    ahead = Ahead(slack=slack, slack_max=slack if slack_max is None else slack_max, ahead_s=ahead_s)
    cap = await capacity(db.conn, worker_ttl_s=worker_ttl_s, ahead=ahead)
    events: list[Event] = []
    for device in DEVICES:
        if cap.slots.get(device, 0) == 0:
            continue
        free = min(cap.ahead(device), batch)
        if free <= 0:
            continue
        waiting = await runnable.candidates(
            db.conn,
            device=device,
            per_tenant=free,
            quota_defaults=fair.quota_defaults,
            half_life_s=fair.half_life_s,
        )
        if waiting.stage_in_failed:
            async with db.session() as session:
                for job_id in waiting.stage_in_failed:
                    await fail_stage_in(session=session, job_id=job_id)
        if not waiting.tenants:
            continue
        plan = allocate(
            list(waiting.tenants.values()),
            free,
            usage_scale_s=fair.usage_scale_s,
            slots=cap.slots.get(device, 0),
            reserved=fair.reserved_slots,
        )
        await _say_over_quota(db.conn, plan.over_quota)
        jobs = await _send(
            db.conn,
            [c for c in plan.chosen if c.job_id not in waiting.chunks],
            device,
            stage=db.stage_dispatches,
        )
        if not db.stage_dispatches:
            db.to_publish += jobs
        # a chunk holds a slot for many elements: sent only to slots free now, without the
        # slack, so that what waits stays in fair share instead of in a worker's queue
        chunks = [c for c in plan.chosen if c.job_id in waiting.chunks]
        room = max(0, cap.free(device, 0.0) - len(jobs))
        events += jobs + await send_chunks(db.conn, chunks[:room], device)
    return events


# Mark the chosen jobs dispatched, in one statement. A job another scheduler locked (SKIP
# LOCKED) or dispatched meanwhile (the re-checked WHERE) is left out, and so is its event.
# Each found by its id alone (``state || ''``: ``shared.jobs.store``, BY_ID_ONLY; a plain
# condition lets the partial indexes of dispatchable jobs scan the whole backlog).
# $1 job ids, $2 device, $3 state_reason.
_SEND_CTES = """
WITH locked AS (
    SELECT id FROM jobs
    WHERE id = ANY($1::uuid[]) AND state || '' = 'QUEUED' AND dispatched_at IS NULL
    FOR UPDATE SKIP LOCKED
), sent AS (
    UPDATE jobs SET dispatched_at = now(), assigned_device = $2, state_reason = $3
    FROM locked WHERE jobs.id = locked.id
    RETURNING jobs.id
)"""
_SEND = _SEND_CTES + "\nSELECT id FROM sent\n"
# The same, and the sent jobs' events staged in the outbox: $4 routing key, $5 message ids
# and $6 bodies of the events, in the order of $1.
_SEND_STAGED = (
    _SEND_CTES  # noqa: S608 (fixed text only)
    + """, staged AS (
    INSERT INTO outbox (message_id, routing_key, body)
    SELECT e.message_id, $4, e.body
    FROM unnest($1::uuid[], $5::uuid[], $6::bytea[]) AS e(job_id, message_id, body)
    JOIN sent ON sent.id = e.job_id
)
SELECT id FROM sent
"""
)


async def _send(
    conn: Any, chosen: list[Candidate], device: Device, *, stage: bool = True
) -> list[Event]:
    """Dispatch the chosen jobs to ``device``'s queue; return the events of those sent,
    staged in the outbox with ``stage``."""
    if not chosen:
        return []
    events = [
        JobDispatched(tenant_id=c.tenant_id, job_id=c.job_id, device=device, kernel=c.kernel)
        for c in chosen
    ]
    start_ns = time.time_ns()
    ids, reason = [e.job_id for e in events], f"dispatched to the {device} queue"
    if stage:
        rows = await conn.fetch(
            _SEND_STAGED,
            ids,
            device,
            reason,
            events[0].routing_key,
            [e.event_id for e in events],
            [e.to_bytes() for e in events],
        )
    else:
        rows = await conn.fetch(_SEND, ids, device, reason)
    sent = {r[0] for r in rows}
    if tracing.enabled():
        done = [(e.job_id, e.event_id) for e in events if e.job_id in sent]
        tracing.dispatched(done, start_ns, device)
        for job_id, event_id in done:  # one log line each, in its dispatch span
            with tracing.about(job_id, event_id):
                log.info("job_dispatched", job_id=str(job_id), device=device)
    return [e for e in events if e.job_id in sent]


# Say why an over-quota tenant's jobs wait ($1 tenants, $2 reasons), writing only rows whose
# reason changes.
_OVER_QUOTA = """
UPDATE jobs SET state_reason = h.reason
FROM unnest($1::uuid[], $2::text[]) AS h(tenant_id, reason)
WHERE jobs.tenant_id = h.tenant_id AND jobs.state = 'QUEUED' AND jobs.dispatched_at IS NULL
  AND jobs.state_reason IS DISTINCT FROM h.reason
"""


async def _say_over_quota(conn: Any, reasons: dict[uuid.UUID, str]) -> None:
    if reasons:
        await conn.execute(_OVER_QUOTA, list(reasons), list(reasons.values()))


async def explain_waiting(*, session: AsyncSession, worker_ttl_s: float) -> None:
    """Say on each undispatched job that no worker for its device is up (run by the reaper
    loop: a slower cadence than dispatch is enough for a human-readable reason)."""
    cap = await session_capacity(session=session, worker_ttl_s=worker_ttl_s)
    waiting = and_(Job.state == JobState.QUEUED.value, Job.dispatched_at.is_(None), ~Job.is_array)
    for device, reason in (
        ("cuda", "waiting: no cuda worker is up"),
        ("any", "waiting: no worker is up"),
        ("cpu", "waiting: no cpu worker is up"),
    ):
        devices = ("cuda", "cpu") if device == "any" else (device,)
        if any(cap.slots.get(d, 0) for d in devices):
            continue
        await session.execute(
            update(Job)
            .where(waiting, Job.device == device, Job.state_reason.is_distinct_from(reason))
            .values(state_reason=reason)
        )


def _slot_time_s(started_at: datetime | None, lease_expires_at: datetime | None) -> float:
    """How long a lost attempt kept its slot: from its start to its lease's end (the CPU
    seconds its worker measured were lost with it; this is their upper bound)."""
    if started_at is None or lease_expires_at is None:
        return 0.0
    return max(0.0, (lease_expires_at - started_at).total_seconds())


async def requeue_lost(
    *, session: AsyncSession, now: datetime, batch: int = 200
) -> list[LostAttempt]:
    """Return jobs whose worker's lease expired to QUEUED (counting the attempt), or fail
    them when no retries are left; the attempts lost. The lost attempt gets its
    ``job_attempts`` row here, as every attempt gets one where it ends
    (``record_lost_attempts``: all in one statement); a retry stages its ``job.retry``, and
    the freed slots wake the schedulers (one NOTIFY)."""
    expired = (
        await session.execute(
            select(
                Job.id,
                Job.tenant_id,
                Job.attempts,
                Job.worker,
                Job.started_at,
                Job.lease_expires_at,
                Job.assigned_device,
            )
            .where(Job.state == JobState.RUNNING.value, Job.lease_expires_at < now, ~Job.is_array)
            .order_by(Job.id)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
    ).all()
    lost: list[LostAttempt] = []
    for job_id, tenant_id, attempt, worker, started_at, lease_expires_at, device in expired:
        t = await set_job_state(session, job_id, Lost(attempt))
        if t.accepted:
            held_s = _slot_time_s(started_at, lease_expires_at)
            lost.append(LostAttempt(job_id, tenant_id, attempt, worker, held_s, device, started_at))
    await record_lost_attempts(session, lost)
    if lost:
        await notify(session, FINISHED)
    return lost


async def redispatch_unclaimed(*, session: AsyncSession, now: datetime, after_s: float) -> None:
    """Send again the jobs dispatched more than ``after_s`` ago that no worker claimed (the
    message or its worker was lost)."""
    await session.execute(
        update(Job)
        .where(
            Job.state == JobState.QUEUED.value,
            Job.dispatched_at < now - timedelta(seconds=after_s),
            ~Job.is_array,
        )
        .values(
            dispatched_at=None,
            assigned_device=None,
            state_reason="re-dispatching: no worker claimed the job",
        )
    )


async def forget_workers(*, session: AsyncSession, now: datetime, silent_s: float) -> None:
    """Delete the rows of workers whose last heartbeat is older than ``silent_s``."""
    await session.execute(
        delete(Worker).where(Worker.heartbeat_at < now - timedelta(seconds=silent_s))
    )
