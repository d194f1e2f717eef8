"""Starting in any order: a service serves ``/healthz`` and ``/readyz`` (503, "starting") at
once, while its lifespan waits for its dependencies with backoff in the background.

``start_in_background(lifespan)`` wraps a service's lifespan. It waits for the lifespan's
start to finish, as before, unless the start reports that it waits for a dependency
(``note_waiting``, called by the backoff loops of the broker and the database): then the
server starts serving and the start goes on in a task. Until it is done, ``app.state.starting``
is true, ``/readyz`` answers 503 and names what the start waits for, and ``StartingGuard``
answers the API with 503 and ``Retry-After``. A start that fails for another reason than a
missing dependency stops the process, as an exception in the lifespan always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.logging import get_logger
from shared.problems import problem

log = get_logger(__name__)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


@dataclass
class Startup:
    """What a starting service waits for (shown by ``/readyz``)."""

    waiting_for: str | None = None
    waiting: asyncio.Event = field(default_factory=asyncio.Event)


_current: ContextVar[Startup | None] = ContextVar("stratus_startup", default=None)


def note_waiting(dependency: str) -> None:
    """Say that the start waits for ``dependency`` (called from backoff loops); a no-op
    outside a start."""
    startup = _current.get()
    if startup is not None:
        startup.waiting_for = dependency
        startup.waiting.set()


def note_ready(dependency: str) -> None:
    startup = _current.get()
    if startup is not None and startup.waiting_for == dependency:
        startup.waiting_for = None


def starting(app: FastAPI) -> Startup | None:
    """The start in progress, or None once the service has started."""
    startup = getattr(app.state, "startup", None)
    return startup if isinstance(startup, Startup) else None


def start_in_background(lifespan: Lifespan) -> Lifespan:
    @asynccontextmanager
    async def wrapper(app: FastAPI) -> AsyncIterator[None]:
        startup = Startup()
        app.state.startup = startup
        started = asyncio.Event()
        stop = asyncio.Event()

        async def run() -> None:
            _current.set(startup)
            async with lifespan(app):
                app.state.startup = None
                started.set()
                log.info("service_started")
                await stop.wait()

        task = asyncio.create_task(run(), name="service-start")
        signals = [asyncio.create_task(e.wait()) for e in (started, startup.waiting)]
        await asyncio.wait([task, *signals], return_when=asyncio.FIRST_COMPLETED)
        for s in signals:
            s.cancel()
        if task.done():
            task.result()  # the start failed: raise it here, the server does not start
        if not started.is_set():
            log.warning("starting_in_background", waiting_for=startup.waiting_for)
            task.add_done_callback(_stop_if_failed)
        try:
            yield
        finally:
            stop.set()
            if not started.is_set():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return wrapper


def _stop_if_failed(task: asyncio.Task[None]) -> None:
    if task.cancelled() or task.exception() is None:
        return
    log.error("start_failed", error=repr(task.exception()))
    os.kill(os.getpid(), signal.SIGTERM)  # as a failing lifespan would: exit, be restarted


HEALTH_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc")


class StartingGuard:
    """While the service is starting, anything but health and docs is 503 with
    ``Retry-After`` (pure ASGI middleware; the state is read per request)."""

    def __init__(self, app: ASGIApp, retry_after_s: int = 2) -> None:
        self.app = app
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(HEALTH_PATHS):
            fastapi_app = scope.get("app")
            if isinstance(fastapi_app, FastAPI) and starting(fastapi_app) is not None:
                response = problem(
                    503,
                    "Starting",
                    "the service is waiting for its dependencies",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
