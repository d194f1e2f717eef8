"""Scheduler composition root: the event consumer, the wake-up listener (PostgreSQL NOTIFY)
and the background loops (dispatch, lease reaper, optional vacuum, optional autoscaler).

Several schedulers may run: the one holding the leader lock (``services.scheduler.leader``)
runs the loops of ``LEADER_ONLY``; the others stand by, running only what is safe anywhere
(the monitor's gauges, the wake-up listener, the event consumer, the outbox relay)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from prometheus_client import Counter
from sqlalchemy import func, select

from services.scheduler import service
from services.scheduler.autoscaler import Autoscaler, make_autoscale_step, make_backend
from services.scheduler.chunks import reap_chunks
from services.scheduler.handlers import make_event_handler
from services.scheduler.leader import Leadership, lock_connect
from services.scheduler.monitor import MONITOR_INTERVAL_S, make_monitor_step
from services.scheduler.preempt import Preemptor, preempt_pass
from services.scheduler.settings import SchedulerSettings
from services.scheduler.webhooks import Deliverer
from shared.db.maintenance import maintain
from shared.db.outbox import publish_or_stage
from shared.db.wakeup import WakeListener, listener_connect
from shared.logging import configure_logging, get_logger
from shared.loops import periodic, stop_loops
from shared.messaging.topology import SCHEDULER
from shared.problems import install_problem_handlers
from shared.resilience import CircuitBreaker
from shared.runtime import Resources, close_resources, open_resources
from shared.startup import start_in_background
from shared.telemetry import REGISTRY, health_router

log = get_logger(__name__)

DISPATCHED = Counter(
    "stratus_scheduler_jobs_dispatched_total",
    "Jobs (and chunks) this scheduler dispatched (only the leader dispatches)",
    registry=REGISTRY,
)


def make_dispatch_step(
    res: Resources, settings: SchedulerSettings
) -> Callable[[], Awaitable[object]]:
    tiers = list(settings.storage.tiers())
    fair = service.FairShareSettings(
        quota_defaults=settings.quotas,
        half_life_s=settings.usage_half_life_s,
        usage_scale_s=settings.usage_scale_s,
        reserved_slots=settings.reserved_slots,
    )

    async def step() -> object:
        await service.materialise(
            res.engine,
            window=settings.array_window,
            limit=settings.array_materialise_max,
            chunk_target_s=settings.array_chunk_target_s if settings.array_chunks else None,
            chunk_max=settings.array_chunk_max,
        )
        async with service.open_pass(
            res.engine, res.sessions, stage_dispatches=settings.dispatch_outbox
        ) as db:
            await service.admit(db, limit=settings.dispatch_batch, tiers=tiers)
            events = await service.dispatch(
                db,
                worker_ttl_s=settings.worker_ttl_s,
                slack=settings.dispatch_slack,
                batch=settings.dispatch_batch,
                fair=fair,
                slack_max=settings.dispatch_slack_max,
                ahead_s=settings.dispatch_ahead_s,
            )
        if events:
            DISPATCHED.inc(len(events))
            staged = len(events) > len(db.to_publish)  # chunks', or all with dispatch_outbox
            if db.to_publish:
                try:
                    staged |= not await publish_or_stage(res.broker, res.sessions, db.to_publish)
                except Exception as exc:  # neither broker nor database: re-dispatched later
                    log.warning("dispatch_not_published", error=type(exc).__name__)
            if staged:
                res.relay.wake()
        return events

    return step


def make_reap_step(res: Resources, settings: SchedulerSettings) -> Callable[[], Awaitable[object]]:
    async def step() -> object:
        async with res.sessions() as session, session.begin():
            now = await session.scalar(select(func.now()))
            assert now is not None
            lost = await service.requeue_lost(session=session, now=now)
            await service.redispatch_unclaimed(
                session=session, now=now, after_s=settings.redispatch_after_s
            )
            await reap_chunks(session=session, redispatch_after_s=settings.redispatch_after_s)
            # a worker row outlives its last heartbeat by far more than any dispatch could
            await service.forget_workers(
                session=session, now=now, silent_s=settings.redispatch_after_s * 10
            )
            await service.explain_waiting(session=session, worker_ttl_s=settings.worker_ttl_s)
        if lost:
            res.relay.wake()  # the retries' job.retry
        return lost

    return step


def make_preempt_step(
    res: Resources, settings: SchedulerSettings
) -> Callable[[], Awaitable[object]]:
    preemptor = Preemptor(settings.preempt.min_gap_s)

    async def step() -> object:
        async with res.sessions() as session, session.begin():
            done = await preempt_pass(
                session,
                preemptor,
                autoscale=settings.autoscale,
                worker_ttl_s=settings.worker_ttl_s,
            )
        if done:
            res.relay.wake()  # the job.preempted events
        return done

    return step


@dataclass(frozen=True)
class Loop:
    """A background loop of the scheduler: its step and how often it runs."""

    name: str
    step: Callable[[], Awaitable[object]]
    interval_s: float
    wake: asyncio.Event | None = None  # also runs when set (a job event)
    min_gap_s: float = 0.0

    def run(self, stop: asyncio.Event, *, breaker: CircuitBreaker) -> Coroutine[Any, Any, None]:
        """The loop until ``stop`` is set, guarded by the PostgreSQL ``breaker``."""
        return periodic(
            self.name,
            self.step,
            interval_s=self.interval_s,
            wake=self.wake,
            stop=stop,
            min_gap_s=self.min_gap_s,
            breaker=breaker,
        )


# The loops that change jobs, workers or the database: the leader's alone. The monitor only
# sets gauges from reads (every scheduler sets the same values; the rules take the maximum).
LEADER_ONLY = frozenset({"dispatch", "reaper", "vacuum", "webhooks", "preempt", "autoscale"})


class LeaderLoops:
    """The ``LEADER_ONLY`` loops, started when this scheduler becomes leader and stopped
    when it steps down (cancelled at once when it lost the lock's connection)."""

    def __init__(self, res: Resources, loops: list[Loop]) -> None:
        self.res = res
        self.loops = loops
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.stop = asyncio.Event()
        self.tasks = [
            self.res.spawn(loop.run(self.stop, breaker=self.res.db_breaker), loop.name)
            for loop in self.loops
        ]

    async def halt(self, grace_s: float) -> None:
        tasks, self.tasks = self.tasks, []
        self.stop.set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s) if grace_s > 0 else ((), tasks)
            for task in pending:
                task.cancel()
            # a pass cancelled on a connection that hangs commits nothing; don't wait for it
            # beyond a moment (the resources cancel it again when they close)
            if pending:
                await asyncio.wait(pending, timeout=0.5)
        for task in tasks:  # the resources keep only what still runs
            if task.done():
                with contextlib.suppress(ValueError):
                    self.res.tasks.remove(task)


def make_autoscaler(settings: SchedulerSettings) -> Autoscaler:
    return Autoscaler(
        settings.autoscale,
        make_backend(settings.autoscale),
        worker_ttl_s=settings.worker_ttl_s,
        quota_defaults=settings.quotas,
    )


def loops_of(
    res: Resources, settings: SchedulerSettings, wake: asyncio.Event, autoscaler: Autoscaler | None
) -> list[Loop]:
    """The enabled loops; each works on the database (the PostgreSQL breaker guards it)."""
    loops: list[Loop] = []
    if settings.dispatch_enabled:
        loops.append(
            Loop(
                "dispatch",
                make_dispatch_step(res, settings),
                settings.dispatch_interval_s,
                wake=wake,
                min_gap_s=settings.dispatch_min_gap_s,
            )
        )
    if settings.reaper_enabled:
        loops.append(Loop("reaper", make_reap_step(res, settings), settings.reaper_interval_s))
    if settings.db_vacuum:
        vacuum = partial(maintain, res.engine, min_dead_rows=settings.db_vacuum_min_dead_rows)
        loops.append(Loop("vacuum", vacuum, settings.db_vacuum_interval_s))
    if settings.webhooks.enabled:
        deliverer = Deliverer(res.engine, settings.webhooks)
        loops.append(Loop("webhooks", deliverer.step, settings.webhooks.interval_s))
    if settings.preempt.enabled:
        loops.append(Loop("preempt", make_preempt_step(res, settings), settings.preempt.interval_s))
    if autoscaler is not None:
        step = make_autoscale_step(res.sessions, autoscaler)
        loops.append(Loop("autoscale", step, settings.autoscale.interval_s))
    # the gauges of the alerting rules (backlog age, dead letters, quota use)
    loops.append(Loop("monitor", make_monitor_step(res, settings.quotas), MONITOR_INTERVAL_S))
    return loops


async def stop_gracefully(
    res: Resources, loops: list[asyncio.Task[None]], stop: asyncio.Event, *, grace_s: float
) -> None:
    """SIGTERM: take no more events, let the dispatch and reaper passes in progress commit
    (``grace_s`` at most), then publish what they wrote to the outbox before closing."""
    await res.broker.stop_consuming()
    await stop_loops(loops, stop, grace_s=grace_s)
    # The background relay first: a batch it holds (rows locked, SKIP LOCKED) would be
    # invisible to the flush below and then dropped with it when the resources close.
    await res.relay.stop()
    try:
        async with asyncio.timeout(5):
            while await res.relay.relay_once() > 0:
                pass
    except Exception as exc:  # any other relay publishes it later
        log.warning("outbox_not_flushed", error=type(exc).__name__)
    log.info("scheduler_stopped")


def create_app(settings: SchedulerSettings | None = None) -> FastAPI:
    settings = settings or SchedulerSettings()
    configure_logging("scheduler", level=settings.log_level, json=settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        res = await open_resources(settings, name="scheduler")
        app.state.resources = res
        wake = asyncio.Event()
        stop = asyncio.Event()  # on shutdown: each loop ends after the pass in progress
        autoscaler = None
        loops: list[asyncio.Task[None]] = []
        # Everything after open_resources is inside the ``try``: a start that fails half way
        # (the broker gone meanwhile) still closes what it opened, or the process would hang
        # on its open connections instead of exiting.
        try:
            autoscaler = make_autoscaler(settings) if settings.autoscale.enabled else None
            every = loops_of(res, settings, wake, autoscaler)
            leader_loops = LeaderLoops(res, [lp for lp in every if lp.name in LEADER_ONLY])
            loops.extend(
                res.spawn(loop.run(stop, breaker=res.db_breaker), loop.name)
                for loop in every
                if loop.name not in LEADER_ONLY
            )
            # the leader lock on a connection of its own; the leader's loops stop (their
            # pass in progress cancelled) before the lock can go to another scheduler
            app.state.leadership = leadership = Leadership(
                lock_connect(settings.postgres),
                on_gain=leader_loops.start,
                on_loss=leader_loops.halt,
                retry_s=settings.leader.retry_s,
                check_s=settings.leader.check_s,
                lease_s=settings.leader.lease_s,
                # within the scheduler's own grace, so the lock goes before it closes
                shutdown_grace_s=max(0.0, settings.shutdown_grace_s - 0.5),
            )
            loops.append(res.spawn(leadership.run(stop), "leadership"))
            if settings.dispatch_enabled:
                # submissions and finished attempts wake the dispatch loop by NOTIFY
                connect = listener_connect(settings.postgres, application_name="stratus-scheduler")
                app.state.wake_listener = listener = WakeListener(connect, wake.set)
                loops.append(res.spawn(listener.run(stop), "wake_listener"))
            await res.broker.consume_batches(SCHEDULER, make_event_handler(wake.set))
            log.info("scheduler_started")
            yield
        finally:
            await stop_gracefully(res, loops, stop, grace_s=settings.shutdown_grace_s)
            await close_resources(res)
            if autoscaler is not None:
                await autoscaler.backend.close()

    app = FastAPI(title="Stratus scheduler", lifespan=start_in_background(lifespan))
    install_problem_handlers(app)
    app.include_router(health_router(lambda: app.state.resources.checks()))

    @app.get("/leader", tags=["health"])
    async def leader(request: Request) -> dict[str, Any]:
        """This scheduler's role: ``leader`` (runs dispatch, the reaper, ...) or ``standby``."""
        leadership: Leadership | None = getattr(request.app.state, "leadership", None)
        if leadership is None:
            return {"role": "starting", "since": None}
        return leadership.describe()

    return app
