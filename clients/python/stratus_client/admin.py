"""The platform admin's methods (``client.admin``; the client must hold the admin key):
tenants, their quotas, their API keys; worker pools and dead letters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from stratus_client import _calls
from stratus_client.models import ApiKey, DeadLetters, KeyInfo, Quotas, Tenant, WorkerPool

if TYPE_CHECKING:
    from stratus_client.aio import AsyncClient
    from stratus_client.client import Client

QuotasArg = Quotas | Mapping[str, Any] | None


class Admin:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create_tenant(
        self, name: str, *, weight: int | None = None, quotas: QuotasArg = None
    ) -> Tenant:
        """A new tenant; ``ApiError`` 409 when the name is taken."""
        return self._client._run(_calls.create_tenant(name, weight, quotas))

    def tenants(self) -> Iterator[Tenant]:
        for item in self._client._items("/v1/tenants"):
            yield Tenant.model_validate(item)

    def get_tenant(self, tenant_id: str) -> Tenant:
        return self._client._run(_calls.get_tenant(tenant_id))

    def update_tenant(
        self,
        tenant_id: str,
        *,
        weight: int | None = None,
        quotas: QuotasArg = None,
        suspended: bool | None = None,
    ) -> Tenant:
        """Change what is given; a quota left out of ``quotas`` is the platform default."""
        call = _calls.update_tenant(tenant_id, weight=weight, quotas=quotas, suspended=suspended)
        return self._client._run(call)

    def create_key(
        self, tenant_id: str, name: str, *, scopes: Iterable[str] | None = None
    ) -> ApiKey:
        """A new API key of the tenant (every scope unless ``scopes``); ``key`` is the secret,
        shown only now."""
        return self._client._run(_calls.create_key(tenant_id, name, scopes))

    def keys(self, tenant_id: str) -> Iterator[KeyInfo]:
        """The tenant's API keys, revoked ones too, newest first (never their secrets);
        ``ApiError`` 404 when there is no such tenant."""
        for item in self._client._items(f"{_calls.tenant_path(tenant_id)}/keys"):
            yield KeyInfo.model_validate(item)

    def delete_key(self, tenant_id: str, key_id: str) -> None:
        """Revoke a key: it stops working within a second on every gateway."""
        self._client._run(_calls.delete_key(tenant_id, key_id))

    def pools(self) -> list[WorkerPool]:
        """The worker pools: live workers, and the autoscaler's bounds, demand and decisions."""
        return self._client._run(_calls.pools())

    def dead_letters(self, *, peek: int = 10) -> list[DeadLetters]:
        """Per durable queue: its dead letters' count and the oldest ``peek`` (0-100) of them,
        left in place."""
        return self._client._run(_calls.dead_letters(peek))


class AsyncAdmin:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create_tenant(
        self, name: str, *, weight: int | None = None, quotas: QuotasArg = None
    ) -> Tenant:
        return await self._client._run(_calls.create_tenant(name, weight, quotas))

    async def tenants(self) -> AsyncIterator[Tenant]:
        async for item in self._client._items("/v1/tenants"):
            yield Tenant.model_validate(item)

    async def get_tenant(self, tenant_id: str) -> Tenant:
        return await self._client._run(_calls.get_tenant(tenant_id))

    async def update_tenant(
        self,
        tenant_id: str,
        *,
        weight: int | None = None,
        quotas: QuotasArg = None,
        suspended: bool | None = None,
    ) -> Tenant:
        call = _calls.update_tenant(tenant_id, weight=weight, quotas=quotas, suspended=suspended)
        return await self._client._run(call)

    async def create_key(
        self, tenant_id: str, name: str, *, scopes: Iterable[str] | None = None
    ) -> ApiKey:
        return await self._client._run(_calls.create_key(tenant_id, name, scopes))

    async def keys(self, tenant_id: str) -> AsyncIterator[KeyInfo]:
        async for item in self._client._items(f"{_calls.tenant_path(tenant_id)}/keys"):
            yield KeyInfo.model_validate(item)

    async def delete_key(self, tenant_id: str, key_id: str) -> None:
        await self._client._run(_calls.delete_key(tenant_id, key_id))

    async def pools(self) -> list[WorkerPool]:
        return await self._client._run(_calls.pools())

    async def dead_letters(self, *, peek: int = 10) -> list[DeadLetters]:
        return await self._client._run(_calls.dead_letters(peek))
