"""Datamover composition root: the claim loop, the migrations it runs, the event consumer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.datamover import service, sweep
from services.datamover.handlers import make_handler
from services.datamover.runner import MigrationRunner
from services.datamover.settings import DatamoverSettings
from shared import tracing
from shared.logging import configure_logging, get_logger
from shared.loops import periodic, stop_loops
from shared.messaging.topology import DATAMOVER
from shared.problems import install_problem_handlers
from shared.runtime import Resources, close_resources, open_resources
from shared.startup import start_in_background
from shared.storage import Storage
from shared.telemetry import health_router

log = get_logger(__name__)


class Mover:
    """Claims migrations as capacity allows and runs each in its own task."""

    def __init__(self, res: Resources, storage: Storage, settings: DatamoverSettings) -> None:
        self.res = res
        self.settings = settings
        self.runner = MigrationRunner(res.sessions, storage, settings)
        self.active: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.wake = asyncio.Event()
        self._first = True

    async def claim_step(self) -> int:
        capacity = self.settings.max_active - len(self.active)
        if capacity <= 0 or self.runner.stopping.is_set():
            return 0
        async with self.res.sessions() as session, session.begin():
            ids = await service.claim(
                session=session,
                owner=self.runner.owner,
                capacity=capacity,
                per_tenant=self.settings.migrations_per_tenant,
                lease_s=self.settings.lease_s,
                reclaim_own=self._first,
            )
        self._first = False
        for migration_id in ids:
            if migration_id in self.active:
                continue
            work = tracing.traced_run(
                "datamover.migrate", migration_id, self.runner.run(migration_id)
            )
            task = asyncio.create_task(work, name=f"m-{migration_id}")
            self.active[migration_id] = task
            task.add_done_callback(functools.partial(self._done, migration_id))
        return len(ids)

    def _done(self, migration_id: uuid.UUID, _task: asyncio.Task[None]) -> None:
        self.active.pop(migration_id, None)
        self.wake.set()  # a slot is free: the next one in line may start
        self.res.relay.wake()  # publish its migration.finished (if it ended) now

    async def stop(self) -> None:
        """Claim nothing more; running copies pause at a chunk boundary and record their
        progress (for ``shutdown_grace_s`` at most, then they are cancelled); then release the
        leases so that another datamover resumes them at once."""
        self.runner.stopping.set()
        tasks = list(self.active.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        try:
            async with self.res.sessions() as session, session.begin():
                released = await service.release(session=session, owner=self.runner.owner)
        except Exception as exc:  # the leases run out by themselves
            log.warning("leases_not_released", error=type(exc).__name__)
            return
        if released:
            self.res.relay.wake()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self.res.relay.relay_once()  # wake the other datamovers now
        log.info("datamover_stopped", released=[str(m) for m in released])


def create_app(settings: DatamoverSettings | None = None) -> FastAPI:
    settings = settings or DatamoverSettings()
    configure_logging("datamover", level=settings.log_level, json=settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        res = await open_resources(settings, name="datamover")
        stop = asyncio.Event()
        loops: list[asyncio.Task[None]] = []
        storage: Storage | None = None
        mover: Mover | None = None
        # Everything after open_resources is inside the ``try``: a start that fails half way
        # (the broker gone meanwhile) still closes what it opened, or the process would hang
        # on its open connections instead of exiting.
        try:
            storage = Storage(
                settings.storage,
                failure_threshold=settings.breaker_failure_threshold,
                reset_timeout_s=settings.breaker_reset_s,
            )
            mover = Mover(res, storage, settings)
            app.state.resources = res
            app.state.mover = mover
            loops.append(
                res.spawn(
                    periodic(
                        "migration-claims",
                        mover.claim_step,
                        interval_s=settings.claim_interval_s,
                        wake=mover.wake,
                        stop=stop,
                        breaker=res.db_breaker,
                    ),
                    "migration-claims",
                )
            )
            if settings.sweep_enabled:
                loops.append(
                    res.spawn(
                        periodic(
                            "upload-sweep",
                            functools.partial(
                                sweep.sweep,
                                sessions=res.sessions,
                                storage=storage,
                                after_s=settings.sweep_after_s,
                            ),
                            interval_s=settings.sweep_interval_s,
                            stop=stop,
                        ),
                        "upload-sweep",
                    )
                )
            await res.broker.consume(DATAMOVER, make_handler(mover.wake.set))
            log.info("datamover_started", owner=mover.runner.owner)
            yield
        finally:
            await res.broker.stop_consuming()
            await stop_loops(loops, stop, grace_s=settings.shutdown_grace_s)
            if mover is not None:
                await mover.stop()
            await close_resources(res)
            if storage is not None:
                await storage.close()

    app = FastAPI(title="Stratus datamover", lifespan=start_in_background(lifespan))
    install_problem_handlers(app)
    app.include_router(health_router(lambda: app.state.resources.checks()))
    return app
