"""Tenant shapes the gateway adds to the tenant service's own."""

from __future__ import annotations

from pydantic import BaseModel

from services.tenant.schemas import TenantOut


class TenantList(BaseModel):
    items: list[TenantOut]
    next_cursor: str | None
