"""Gateway composition root: resources in the lifespan, routers, error table, health."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from services.gateway.auth import Authenticator
from services.gateway.jobs.routes import router as jobs_router
from services.gateway.settings import GatewaySettings
from services.gateway.tenants.routes import router as tenants_router
from shared.logging import configure_logging
from shared.problems import install_problem_handlers, problem
from shared.runtime import close_resources, open_resources
from shared.telemetry import health_router, instrument


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    configure_logging("gateway", level=settings.log_level, json=settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        res = await open_resources(settings, name="gateway", with_redis=True)
        app.state.resources = res
        app.state.authenticator = Authenticator(
            res.sessions,
            admin_key=settings.admin_key.get_secret_value(),
            key_secret=settings.key_secret.get_secret_value(),
            ttl_s=settings.auth_cache_ttl_s,
        )
        try:
            yield
        finally:
            await close_resources(res)

    app = FastAPI(
        title="Stratus",
        version="1",
        summary="Cloud-native HPC job service",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_problem_handlers(app)
    instrument(app)
    _limit_body(app, settings.max_body_bytes)
    app.include_router(health_router(lambda: app.state.resources.checks()))
    app.include_router(tenants_router)
    app.include_router(jobs_router)
    return app


def _limit_body(app: FastAPI, max_bytes: int) -> None:
    """413 for JSON bodies over the limit (dataset uploads stream and are exempt)."""

    @app.middleware("http")
    async def _body_limit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if (
            length is not None
            and length.isdigit()
            and int(length) > max_bytes
            and not request.url.path.startswith("/v1/datasets/")
        ):
            return problem(413, "Payload too large", f"bodies are limited to {max_bytes} bytes")
        return await call_next(request)
