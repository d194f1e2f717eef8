"""Gateway composition root: resources in the lifespan, routers, error table, health."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import Depends, FastAPI

from services.gateway.accounting.routes import router as accounting_router
from services.gateway.admin.pools import router as pools_router
from services.gateway.admin.routes import router as admin_router
from services.gateway.auth import Authenticator
from services.gateway.bodies import BodyLimitMiddleware, BodyLimits
from services.gateway.console.routes import install_console
from services.gateway.datasets.routes import router as datasets_router
from services.gateway.datasets.routes import tiers_router
from services.gateway.deps import GatewayDb, raw_db
from services.gateway.docs import install_docs
from services.gateway.events.hub import EventHub
from services.gateway.events.routes import router as events_router
from services.gateway.jobs.admission import ClosedPools
from services.gateway.jobs.history import router as history_router
from services.gateway.jobs.routes import router as jobs_router
from services.gateway.jobs.writer import JobWriter
from services.gateway.migrations.routes import router as migrations_router
from services.gateway.openapi import describe_deployment
from services.gateway.settings import GatewaySettings
from services.gateway.tenants.routes import router as tenants_router
from services.gateway.webhooks.routes import router as webhooks_router
from services.gateway.workflows.routes import router as workflows_router
from shared.db.wakeup import listener_connect
from shared.logging import configure_logging
from shared.messaging import Delivery
from shared.messaging.topology import control_queue
from shared.problems import install_problem_handlers
from shared.ratelimit import RateLimiter
from shared.routing import reject_undeclared_query
from shared.runtime import close_resources, open_resources
from shared.startup import StartingGuard, start_in_background
from shared.telemetry import health_router, instrument

ROUTERS = (
    tenants_router,
    jobs_router,
    events_router,
    workflows_router,
    history_router,
    datasets_router,
    tiers_router,
    migrations_router,
    accounting_router,
    admin_router,
    pools_router,
    webhooks_router,
)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    configure_logging("gateway", level=settings.log_level, json=settings.log_json)
    app = FastAPI(
        title="Stratus",
        version="1",
        summary="Cloud-native HPC job service",
        lifespan=start_in_background(partial(lifespan, settings=settings)),
        dependencies=[Depends(reject_undeclared_query)],  # 422 for an unknown query parameter
        docs_url=None,  # served by install_docs, without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.tiers = frozenset(settings.storage.tiers())
    app.state.closed_pools = ClosedPools()
    install_problem_handlers(app)
    describe_deployment(app, settings)
    instrument(app)
    app.add_middleware(StartingGuard)  # 503 + Retry-After until the dependencies answer
    app.add_middleware(BodyLimitMiddleware, limits=body_limits(settings))
    app.include_router(health_router(lambda: app.state.resources.checks()))
    install_docs(app)
    install_console(app)  # /console: the web console, on the public API only
    for router in ROUTERS:
        app.include_router(router)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI, *, settings: GatewaySettings) -> AsyncIterator[None]:
    """The gateway's resources, its authenticator (its key cache emptied on every
    ``tenant.changed``), rate limiter and submission writer, for the app's life."""
    res = await open_resources(settings, name="gateway", with_redis=True)
    app.state.resources = res
    auth = Authenticator(
        res.sessions,
        admin_key=settings.admin_key.get_secret_value(),
        key_secret=settings.key_secret.get_secret_value(),
        quota_defaults=settings.quotas,
        ttl_s=settings.auth_cache_ttl_s,
        breaker=res.db_breaker,
    )
    app.state.authenticator = auth
    assert res.redis is not None
    app.state.rate_limiter = RateLimiter(res.redis)
    writer = JobWriter(
        lambda: raw_db(res),
        max_rows=settings.submit_batch_max_rows,
        linger_s=settings.submit_batch_linger_s,
    )
    app.state.submit_db = GatewayDb(res, writer)
    hub = EventHub(
        lambda: raw_db(res),
        listener_connect(settings.postgres, application_name="stratus-gateway-events"),
        poll_s=settings.events_poll_s,
    )
    app.state.events_hub = hub
    hub_stop = asyncio.Event()
    hub_task = asyncio.ensure_future(hub.run(hub_stop))

    async def on_control(_delivery: Delivery) -> None:
        auth.invalidate()  # a tenant or key changed somewhere

    # Inside the ``try``: a start that fails here (the broker gone meanwhile) still closes
    # what it opened, or the process would hang on its open connections instead of exiting.
    try:
        await res.broker.consume(
            control_queue(f"gateway-{uuid.uuid4().hex[:12]}", ("tenant.changed",)), on_control
        )
        yield
    finally:
        hub_stop.set()
        await writer.stop()  # what was accepted is written before the pool closes
        await hub_task
        await close_resources(res)


def body_limits(settings: GatewaySettings) -> BodyLimits:
    return BodyLimits(
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        idle_timeout_s=settings.body_idle_timeout_s,
    )
