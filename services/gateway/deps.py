"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from services.gateway.auth import Authenticator, Principal
from services.gateway.jobs.writer import JobWriter
from services.gateway.settings import GatewaySettings
from shared.db.engine import is_connectivity_error
from shared.db.raw import raw_connection
from shared.errors import DependencyUnavailable, TooManyRequests
from shared.logging import get_logger
from shared.ratelimit import RateLimiter
from shared.resilience import CircuitBreaker
from shared.runtime import Resources

log = get_logger(__name__)


# Dependencies are ``async`` even when they do not await: FastAPI runs plain functions in a
# thread pool, which costs more than the work they do.
async def get_resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


async def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


@asynccontextmanager
async def session_scope(res: Resources) -> AsyncIterator[AsyncSession]:
    """One session and transaction: committed when the block ends, rolled back on error,
    guarded by the database circuit breaker; wakes the outbox relay when it wrote events."""
    res.db_breaker.before_call()  # open circuit: 503 at once, no waiting on a dead database
    try:
        async with res.sessions() as session, session.begin():
            yield session
    except Exception as exc:
        judge(res.db_breaker, exc)
        raise
    except BaseException:  # cancelled (client went away): no verdict on the database
        res.db_breaker.abandon()
        raise
    res.db_breaker.on_success()
    if session.info.pop("outbox", False):
        res.relay.wake()


def judge(breaker: CircuitBreaker, exc: Exception) -> None:
    """What an error of a block that used the database says about the database: its own
    connection failing counts against it; an error it answered with (a constraint, a bad
    statement) shows it is up; anything else (a tenant's 404 or 409, a storage tier's error)
    says nothing about it, so it neither counts nor closes an open circuit."""
    if is_connectivity_error(exc):
        breaker.on_failure(exc)
    elif isinstance(exc, DBAPIError | asyncpg.PostgresError):
        breaker.on_success()
    else:
        breaker.abandon()


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the route returns, rolled back on error."""
    async with session_scope(request.app.state.resources) as session:
        yield session


def database_unavailable(exc: BaseException) -> BaseException:
    """What a caller sees for ``exc`` from a raw connection: a connectivity error becomes the
    503 that a session's ``OperationalError`` gets (plain asyncpg errors have no handler of
    their own); anything else is itself."""
    if is_connectivity_error(exc) and not isinstance(exc, DependencyUnavailable):
        # Logged as the handler of a session's connectivity errors logs it.
        log.warning("dependency_unavailable", dependency="postgres", error=type(exc).__name__)
        return DependencyUnavailable("The database is unavailable; retry later.", retry_after=2)
    return exc


@asynccontextmanager
async def raw_db(res: Resources) -> AsyncIterator[Any]:
    """A plain asyncpg connection for a hot path (no SQLAlchemy session), guarded by the
    database circuit breaker exactly as ``get_session`` is: an open circuit is a 503 at once,
    connectivity errors count, a cancelled call gives no verdict. The caller manages its own
    transaction (``async with conn.transaction():``) or runs single statements."""
    res.db_breaker.before_call()
    try:
        async with raw_connection(res.engine) as conn:
            yield conn
    except Exception as exc:
        judge(res.db_breaker, exc)
        mapped = database_unavailable(exc)
        if mapped is exc:
            raise
        raise mapped from exc
    except BaseException:
        res.db_breaker.abandon()
        raise
    res.db_breaker.on_success()


class GatewayDb:
    """The database as ``POST /v1/jobs`` uses it (implements ``service.SubmitDb``): guarded raw
    connections, a session only on demand, and the process's group-commit writer."""

    __slots__ = ("res", "writer")

    def __init__(self, res: Resources, writer: JobWriter) -> None:
        self.res = res
        self.writer = writer

    def raw(self) -> AbstractAsyncContextManager[Any]:
        return raw_db(self.res)

    def session(self) -> AbstractAsyncContextManager[AsyncSession]:
        return session_scope(self.res)


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
