"""Metrics (Prometheus) and the health endpoints every service serves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REGISTRY = CollectorRegistry(auto_describe=True)
# CPU seconds, resident memory and open files of the process, read from /proc at scrape time
ProcessCollector(registry=REGISTRY)

HTTP_REQUESTS = Counter(
    "stratus_http_requests_total",
    "HTTP requests",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "stratus_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    registry=REGISTRY,
)
MESSAGES = Counter(
    "stratus_messages_total",
    "Messages consumed by outcome",
    ["queue", "outcome"],
    registry=REGISTRY,
)
PUBLISHED = Counter(
    "stratus_messages_published_total",
    "Messages published with confirms",
    ["routing_key"],
    registry=REGISTRY,
)
OUTBOX_PENDING = Gauge(
    "stratus_outbox_pending", "Outbox rows seen waiting at the last relay pass", registry=REGISTRY
)
JOB_TRANSITIONS = Counter(
    "stratus_job_transitions_total", "Job state transitions", ["to_state"], registry=REGISTRY
)
DEPENDENCY_UP = Gauge(
    "stratus_dependency_up",
    "1 when a dependency answered the last readiness probe",
    ["dependency"],
    registry=REGISTRY,
)

CIRCUIT_STATE = Gauge(
    "stratus_circuit_state",
    "Circuit breaker state: 0 closed, 1 half-open, 2 open",
    ["circuit"],
    registry=REGISTRY,
)
_STATE_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}

ReadinessCheck = Callable[[], Awaitable[Any]]


class Readiness(BaseModel):
    """``/readyz``: ``ok`` when every dependency answers; per dependency ``ok`` or why not."""

    status: str
    checks: dict[str, str]


READINESS = {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}

B = TypeVar("B")


def watch_breaker(breaker: B) -> B:
    """Expose a circuit breaker's state in ``/metrics`` (read at scrape time)."""
    name = str(getattr(breaker, "name", "unknown"))
    CIRCUIT_STATE.labels(name).set_function(
        lambda: _STATE_VALUE.get(str(getattr(breaker, "state", "closed")), 0.0)
    )
    return breaker


class MetricsMiddleware:
    """Pure ASGI middleware: count and time every HTTP request by route template (never by
    raw path, so ids do not explode the label set). Cheaper than ``BaseHTTPMiddleware``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - start)


def instrument(app: FastAPI) -> None:
    app.add_middleware(MetricsMiddleware)


def health_router(
    checks: Callable[[], dict[str, ReadinessCheck]], *, timeout_s: float = 1.0
) -> APIRouter:
    """``/healthz`` (process alive), ``/readyz`` (every dependency answers), ``/metrics``.

    ``checks`` is called per probe, so resources opened in the lifespan can be named.
    """
    router = APIRouter(include_in_schema=True, tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"description": "a dependency does not answer", "content": READINESS}},
    )
    async def readyz(request: Request) -> JSONResponse:
        results: dict[str, str] = {}
        ok = True
        startup = getattr(request.app.state, "startup", None)  # see shared.startup
        if startup is not None:  # still waiting for its dependencies
            waiting = getattr(startup, "waiting_for", None) or "start"
            return JSONResponse(
                {"status": "starting", "checks": {waiting: "waiting"}}, status_code=503
            )
        try:
            current = checks()
        except AttributeError:  # resources not open yet
            return JSONResponse({"status": "starting", "checks": {}}, status_code=503)
        for name, check in current.items():
            try:
                await asyncio.wait_for(check(), timeout_s)
                results[name] = "ok"
                DEPENDENCY_UP.labels(name).set(1)
            except Exception as exc:  # any failure means "not ready"
                ok = False
                results[name] = f"unavailable: {type(exc).__name__}"
                DEPENDENCY_UP.labels(name).set(0)
        body = {"status": "ok" if ok else "unavailable", "checks": results}
        return JSONResponse(body, status_code=200 if ok else 503)

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router
