"""Tenant service composition root: counts usage from ``job.finished`` events.

Tenants, keys, quotas, usage reads and the audit log are use cases in this package
(``service``, ``usage``, ``audit``) that the gateway calls in its own transactions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.tenant.handlers import make_usage_handler
from services.tenant.settings import TenantSettings
from shared.logging import configure_logging, get_logger
from shared.messaging.topology import TENANT_USAGE
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
        await res.broker.consume_batches(
            TENANT_USAGE,
            make_usage_handler(res.engine),
            max_wait_s=settings.usage_batch_wait_s,
        )
        log.info("tenant_started")
        try:
            yield
        finally:
            await close_resources(res)

    app = FastAPI(title="Stratus tenant", lifespan=start_in_background(lifespan))
    install_problem_handlers(app)
    app.include_router(health_router(lambda: app.state.resources.checks()))
    return app
