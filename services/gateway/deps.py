"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.auth import Authenticator, Principal
from services.gateway.settings import GatewaySettings
from shared.runtime import Resources


def get_resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the route returns, rolled back on error."""
    res = get_resources(request)
    async with res.sessions() as session:
        async with session.begin():
            yield session
        if session.info.pop("outbox", False):
            res.relay.wake()


async def get_principal(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    auth: Authenticator = request.app.state.authenticator
    return await auth.authenticate(authorization)


ResourcesDep = Annotated[Resources, Depends(get_resources)]
SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
