"""Authentication: the platform admin key (from settings) or a tenant's API key (hashed)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.gateway.tenants.service import KeyOwner, find_key
from shared.errors import Forbidden, Unauthorized
from shared.logging import get_logger
from shared.resilience import CircuitBreaker, CircuitOpen
from shared.security import constant_time_equal, hash_key, looks_like_key
from shared.settings import QuotaDefaults

log = get_logger(__name__)

CONNECTIVITY = (OperationalError, InterfaceError, PoolTimeout, DBAPIError, OSError)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin, or a tenant through one of its keys."""

    is_admin: bool
    tenant_id: uuid.UUID | None = None
    key_id: uuid.UUID | None = None
    scopes: frozenset[str] = frozenset()
    quotas: dict[str, Any] = field(default_factory=dict)  # effective: defaults filled in

    @property
    def actor(self) -> str:
        """Who, for the audit log: the admin, or a tenant's key (never the secret)."""
        return "admin" if self.is_admin else f"key:{self.key_id}"

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this endpoint needs the platform admin key")

    def require_tenant(self, scope: str) -> uuid.UUID:
        if self.tenant_id is None:
            raise Forbidden("this endpoint needs a tenant key")
        if scope not in self.scopes:
            raise Forbidden(f"this key lacks the {scope!r} scope")
        return self.tenant_id


class Authenticator:
    """Resolves bearer tokens. Tenant keys are cached per process; a ``tenant.changed`` event
    (key revoked, tenant suspended, quotas changed) empties the cache on every gateway at once,
    and ``ttl_s`` bounds staleness should an event be missed."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        admin_key: str,
        key_secret: str,
        quota_defaults: QuotaDefaults,
        ttl_s: float = 30.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.breaker = breaker
        self.sessions = sessions
        self.admin_key = admin_key
        self.key_secret = key_secret
        self.quota_defaults = quota_defaults
        self.ttl_s = ttl_s
        self._cache: dict[bytes, tuple[float, KeyOwner | None]] = {}

    def invalidate(self) -> None:
        self._cache.clear()

    async def _fetch(self, digest: bytes) -> KeyOwner | None:
        breaker = self.breaker
        if breaker is not None:
            breaker.before_call()
        try:
            async with self.sessions() as session:
                owner = await find_key(session=session, key_hash=digest)
        except Exception as exc:
            if breaker is not None:
                breaker.on_failure(exc)
            raise
        if breaker is not None:
            breaker.on_success()
        return owner

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized("missing Authorization header")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("expected 'Authorization: Bearer <api key>'")
        if constant_time_equal(token, self.admin_key):
            return Principal(is_admin=True)
        if not looks_like_key(token):
            raise Unauthorized("unknown API key")
        owner = await self._lookup(hash_key(token, self.key_secret))
        if owner is None:
            raise Unauthorized("unknown API key")
        if owner.suspended:
            raise Forbidden("tenant is suspended")
        quotas = self.quota_defaults.effective(owner.quotas)
        return Principal(False, owner.tenant_id, owner.key_id, owner.scopes, quotas)

    async def _lookup(self, digest: bytes) -> KeyOwner | None:
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            owner = await self._fetch(digest)
        except (CircuitOpen, *CONNECTIVITY) as exc:
            if hit is None or hit[1] is None:
                raise
            # The database is away: keep authenticating known keys from the cache.
            log.warning("auth_from_stale_cache", error=type(exc).__name__)
            return hit[1]
        if len(self._cache) > 10_000:  # bound the memory; a miss costs one query
            self._cache.clear()
        self._cache[digest] = (now + self.ttl_s, owner)
        return owner
