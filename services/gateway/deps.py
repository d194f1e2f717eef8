"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from services.gateway.auth import Authenticator, Principal
from services.gateway.settings import GatewaySettings
from shared.errors import TooManyRequests
from shared.ratelimit import RateLimiter
from shared.runtime import Resources


# Dependencies are ``async`` even when they do not await: FastAPI runs plain functions in a
# thread pool, which costs more than the work they do.
async def get_resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


async def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the route returns, rolled back on error."""
    res: Resources = request.app.state.resources
    res.db_breaker.before_call()  # open circuit: 503 at once, no waiting on a dead database
    try:
        async with res.sessions() as session, session.begin():
            yield session
    except Exception as exc:
        res.db_breaker.on_failure(exc)  # counts only connectivity errors
        raise
    except BaseException:  # cancelled (client went away): no verdict on the database
        res.db_breaker.abandon()
        raise
    res.db_breaker.on_success()
    if session.info.pop("outbox", False):
        res.relay.wake()


class BearerScheme(HTTPBearer):
    """Declares ``Authorization: Bearer <api key>`` in the OpenAPI document (a security
    scheme, not a header parameter); ``get_principal`` reads and judges the header itself."""

    async def __call__(self, request: HTTPConnection) -> HTTPAuthorizationCredentials | None:
        return None


BEARER = BearerScheme(
    auto_error=False,
    scheme_name="bearerAuth",
    description="a tenant's API key (`sk_live_...`) or the platform admin key",
)


async def get_principal(
    request: Request, _bearer: Annotated[None, Security(BEARER)] = None
) -> Principal:
    """Authenticate, then charge the tenant's request against its global rate limit."""
    auth: Authenticator = request.app.state.authenticator
    principal = await auth.authenticate(request.headers.get("authorization"))
    if principal.tenant_id is not None:
        limiter: RateLimiter = request.app.state.rate_limiter
        rate = float(principal.quotas.get("requests_per_second") or 0)
        verdict = await limiter.check(str(principal.tenant_id), rate)
        if not verdict.allowed:
            raise TooManyRequests(
                f"rate limit of {rate:g} requests/s exceeded", retry_after=verdict.retry_after_s
            )
    return principal


ResourcesDep = Annotated[Resources, Depends(get_resources)]
SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
