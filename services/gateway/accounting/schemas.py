"""Usage as the contract states it (``GET /v1/usage``) and its admin view."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field


class Usage(BaseModel):
    cpu_seconds: float = Field(description="CPU seconds of every attempt, measured by workers")
    gpu_seconds: float
    jobs: dict[str, int] = Field(description="jobs per state, every state named")
    storage_bytes: int = Field(description="bytes of the tenant's datasets now")
    bytes_moved: int = Field(description="bytes copied by the tenant's migrations")


class TenantUsage(Usage):
    tenant_id: uuid.UUID
    name: str


class UsageList(BaseModel):
    items: list[TenantUsage]
