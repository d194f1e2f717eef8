"""``POST /v1/tenant/webhook-secret``: parse, call one service function, map the result."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from services.gateway.deps import PrincipalDep, SessionDep, SettingsDep
from services.gateway.routing import feature_router
from services.gateway.tenants.audit import audit
from services.gateway.webhooks import service

router = feature_router(
    prefix="/v1",
    tag="webhooks",
    errors={
        403: "an admin key, a key without the `jobs:write` scope, or tenant suspended",
        429: "rate limit exceeded",
        503: "the database is down; retry after Retry-After",
    },
)


class WebhookSecretOut(BaseModel):
    secret: str = Field(description="signs every delivery from now on; shown only this once")
    created_at: datetime


@router.post("/tenant/webhook-secret", status_code=201)
async def rotate_webhook_secret(
    principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> WebhookSecretOut:
    """Create the calling tenant's webhook signing secret, or replace it: every delivery sent
    from now on, retries included, is signed with the new one only. Needs `jobs:write`."""
    tenant_id = principal.require_tenant("jobs:write")
    new = await service.rotate_secret(
        session=session,
        tenant_id=tenant_id,
        operator_key=settings.webhooks.secret_key.get_secret_value(),
    )
    await audit(
        session=session, actor=principal.actor, action="webhook_secret.rotate", tenant_id=tenant_id
    )
    return WebhookSecretOut(secret=new.secret, created_at=new.created_at)
