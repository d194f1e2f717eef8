"""The gateway as ``bench/auth.py`` serves it: the real app, plus the jobs router mounted a
second time under ``/noauth`` with authentication disabled (bench only, never deployed).

Under ``/noauth`` the principal dependency is replaced by a fixed tenant named in the
``X-Bench-Tenant`` header: the same route functions, the same session, middleware, database
pool and serialisation, minus the key lookup, the scope check and the rate limit. Both
variants live in one process, so that one run compares them under the same conditions.

    python -m bench.auth_app      # STRATUS_* settings from the environment, like the gateway
"""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Request

from services.gateway.app import create_app as create_gateway
from services.gateway.auth import Principal
from services.gateway.deps import get_principal
from services.gateway.jobs.routes import router as jobs_router
from services.gateway.settings import GatewaySettings
from shared.problems import install_problem_handlers
from shared.runtime import serve
from shared.security import SCOPES

NOAUTH_PREFIX = "/noauth"
TENANT_HEADER = "x-bench-tenant"


async def unauthenticated(request: Request) -> Principal:
    """Authentication disabled: the tenant is whoever the header names."""
    return Principal(False, uuid.UUID(request.headers[TENANT_HEADER]), None, frozenset(SCOPES))


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    app = create_gateway(settings)
    open_app = FastAPI(openapi_url=None)
    open_app.state = app.state  # resources opened by the gateway's lifespan
    install_problem_handlers(open_app)
    open_app.include_router(jobs_router)
    open_app.dependency_overrides[get_principal] = unauthenticated
    app.mount(NOAUTH_PREFIX, open_app)
    return app


if __name__ == "__main__":
    serve("bench.auth_app:create_app", GatewaySettings())
