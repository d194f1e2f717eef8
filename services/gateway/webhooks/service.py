"""Webhooks at the gateway: a tenant's signing secret (created or rotated, shown once), and
the checks a submission's ``notify`` passes before anything is stored."""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.jobs.schemas import NotifySpec
from shared.db.models import WebhookSecret
from shared.errors import Invalid
from shared.events import utcnow
from shared.settings import WebhookSettings
from shared.webhooks import Refused, check_url, new_secret, seal

_TENANT_CAN_SIGN = "SELECT EXISTS (SELECT 1 FROM webhook_secrets WHERE tenant_id = $1)"


class RawDb(Protocol):
    def raw(self) -> AbstractAsyncContextManager[Any]: ...


async def check_notify(
    *, db: RawDb, tenant_id: uuid.UUID, notify: NotifySpec | None, settings: WebhookSettings
) -> None:
    """422 for a destination the operator does not allow (resolved now; the scheduler checks
    again before each delivery), or for a tenant without a secret to sign with."""
    if notify is None:
        return
    try:
        await check_url(notify.url, settings)
    except Refused as exc:
        raise Invalid(
            f"notify.url is refused: {exc}",
            errors=[{"loc": ["body", "notify", "url"], "msg": str(exc)}],
        ) from None
    async with db.raw() as conn:
        has_secret = await conn.fetchval(_TENANT_CAN_SIGN, tenant_id)
    if not has_secret:
        message = "create a webhook secret first (POST /v1/tenant/webhook-secret)"
        raise Invalid(
            f"notify needs a webhook secret: {message}",
            errors=[{"loc": ["body", "notify"], "msg": message}],
        )


@dataclass(frozen=True)
class NewSecret:
    secret: str
    created_at: datetime


async def rotate_secret(
    *, session: AsyncSession, tenant_id: uuid.UUID, operator_key: str
) -> NewSecret:
    """A new secret for ``tenant_id`` in place of its old one (if any), sealed at rest."""
    secret, now = new_secret(), utcnow()
    sealed = seal(secret, tenant_id, operator_key)
    statement = insert(WebhookSecret).values(tenant_id=tenant_id, sealed=sealed, created_at=now)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[WebhookSecret.tenant_id],
            set_={"sealed": statement.excluded.sealed, "created_at": statement.excluded.created_at},
        )
    )
    return NewSecret(secret, now)


async def secret_created_at(*, session: AsyncSession, tenant_id: uuid.UUID) -> datetime | None:
    found = await session.execute(
        select(WebhookSecret.created_at).where(WebhookSecret.tenant_id == tenant_id)
    )
    return found.scalar_one_or_none()
