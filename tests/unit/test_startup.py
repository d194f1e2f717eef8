"""``start_in_background``: a start that does not wait keeps the old behaviour (done before
serving, or its error raised); a start that waits for a dependency lets the app serve,
shows what it waits for, and is cancelled cleanly if the app stops first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from shared.startup import StartingGuard, note_ready, note_waiting, start_in_background, starting
from shared.telemetry import health_router


def _app(lifespan: object) -> FastAPI:
    app = FastAPI(lifespan=start_in_background(lifespan))  # type: ignore[arg-type]
    app.add_middleware(StartingGuard)
    app.include_router(health_router(dict))

    @app.get("/v1/thing")
    async def thing() -> dict[str, str]:
        return {"ok": "yes"}

    return app


async def test_a_start_that_does_not_wait_is_done_before_serving() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.sleep(0.05)
        events.append("started")
        yield
        events.append("stopped")

    app = _app(lifespan)
    async with app.router.lifespan_context(app):
        assert events == ["started"]
        assert starting(app) is None
    assert events == ["started", "stopped"]


async def test_a_start_that_fails_raises_as_before() -> None:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("no CUDA on this machine")
        yield  # pragma: no cover

    app = _app(lifespan)
    with pytest.raises(RuntimeError, match="no CUDA"):
        async with app.router.lifespan_context(app):
            pass


async def test_a_waiting_start_serves_503_then_becomes_ready() -> None:
    dependency_up = asyncio.Event()
    stopped: list[bool] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        note_waiting("rabbitmq")
        await dependency_up.wait()
        note_ready("rabbitmq")
        yield
        stopped.append(True)

    app = _app(lifespan)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.get("/readyz")
            assert (r.status_code, r.json()) == (
                503,
                {"status": "starting", "checks": {"rabbitmq": "waiting"}},
            )
            r = await c.get("/v1/thing")
            assert r.status_code == 503
            assert r.headers["retry-after"] == "2"
            assert (await c.get("/healthz")).status_code == 200
            dependency_up.set()
            for _ in range(100):
                if starting(app) is None:
                    break
                await asyncio.sleep(0.01)
            assert (await c.get("/readyz")).status_code == 200
            assert (await c.get("/v1/thing")).json() == {"ok": "yes"}
    assert stopped == [True]


async def test_stopping_while_still_waiting_cancels_the_start() -> None:
    cancelled: list[bool] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        note_waiting("postgres")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        yield  # pragma: no cover

    app = _app(lifespan)
    async with app.router.lifespan_context(app):
        assert starting(app) is not None
    assert cancelled == [True]
