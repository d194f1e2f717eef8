"""The gateway as ``bench/auth.py`` serves it: the real app, plus its jobs router included a
second time under ``/noauth`` with authentication disabled (bench only, never deployed).

One app, one middleware stack, one router: the principal dependency is replaced by one that,
for paths under ``/noauth``, returns a fixed tenant named in the ``X-Bench-Tenant`` header
(no key lookup, no scope check, no rate limit) and otherwise calls the gateway's own
``get_principal``. Both variants therefore run the same route functions, session, database
pool and serialisation in one process, so that one run compares them under the same load.

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
from shared.runtime import serve
from shared.security import SCOPES

NOAUTH_PREFIX = "/noauth"
TENANT_HEADER = "x-bench-tenant"


async def principal(request: Request) -> Principal:
    """Authentication disabled under ``/noauth``: the tenant is whoever the header names."""
    if request.scope["path"].startswith(NOAUTH_PREFIX):
        tenant_id = uuid.UUID(request.headers[TENANT_HEADER])
        return Principal(False, tenant_id, None, frozenset(SCOPES))
    return await get_principal(request)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    app = create_gateway(settings)
    app.include_router(jobs_router, prefix=NOAUTH_PREFIX, include_in_schema=False)
    app.dependency_overrides[get_principal] = principal
    return app


if __name__ == "__main__":
    serve("bench.auth_app:create_app", GatewaySettings())
