"""Tenant service composition root.

Tenants, keys, quotas, usage reads and the audit log are use cases in this package
(``service``, ``usage``, ``audit``) that the gateway calls in its own transactions. Usage is
not copied from events any more: every attempt's row in ``job_attempts`` is written in the
transaction that ends the attempt, and that table is the one source of usage. So this process
consumes nothing; it stays a deployment unit (health, readiness and metrics) for tenant work
that must run on its own, and can be left out of a deployment that has none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.tenant.settings import TenantSettings
from shared.logging import configure_logging, get_logger
from shared.problems import install_problem_handlers
from shared.runtime import close_resources, open_resources
from shared.startup import start_in_background
from shared.telemetry import health_router

log = get_logger(__name__)


def create_app(settings: TenantSettings | None = None) -> FastAPI:
    settings = settings or TenantSettings()
    configure_logging("tenant", level=settings.log_level, json=settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        res = await open_resources(settings, name="tenant")
        app.state.resources = res
        log.info("tenant_started")
        try:
            yield
        finally:
            await close_resources(res)

    app = FastAPI(title="Stratus tenant", lifespan=start_in_background(lifespan))
    install_problem_handlers(app)
    app.include_router(health_router(lambda: app.state.resources.checks()))
    return app
