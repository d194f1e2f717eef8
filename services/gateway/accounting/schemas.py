"""Usage as the contract states it (``GET /v1/usage``), its admin view, and the caller's own
tenant with its use of each quota (``GET /v1/tenant``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class UsageGroup(BaseModel):
    key: str | None = Field(
        description="the kernel, the `key:value` label (null: jobs without labels) or the "
        "UTC day (YYYY-MM-DD)"
    )
    cpu_seconds: float
    gpu_seconds: float
    jobs: int = Field(description="jobs with an attempt that ended in the window")


class Usage(BaseModel):
    cpu_seconds: float = Field(
        description="CPU seconds of every attempt that ended in the window (all of them "
        "without bounds), however it ended, measured by workers"
    )
    gpu_seconds: float
    jobs: dict[str, int] = Field(description="jobs created in the window per state, every state")
    storage_bytes: int = Field(description="bytes of the tenant's datasets now, every copy")
    bytes_moved: int = Field(description="bytes copied by the migrations created in the window")
    since: datetime | None = Field(default=None, description="the window's start (inclusive)")
    until: datetime | None = Field(default=None, description="the window's end (exclusive)")
    group_by: str | None = None
    groups: list[UsageGroup] | None = Field(
        default=None, description="with `group_by`: the window's usage split, by key"
    )


class TenantUsage(Usage):
    tenant_id: uuid.UUID
    name: str


class UsageList(BaseModel):
    items: list[TenantUsage]


class QuotaUse(BaseModel):
    limit: float | int = Field(description="the effective quota (the tenant's or the default)")
    used: float | int | None = Field(default=None, description="what counts against it now")
    held: float | int | None = Field(
        default=None,
        description="cpu_seconds_per_day: the timeout_s of the jobs in flight; storage_bytes: "
        "bytes reserved by writes in progress",
    )


class TenantSelf(BaseModel):
    id: uuid.UUID
    name: str
    weight: int
    suspended: bool
    quotas: dict[str, Any] = Field(description="effective quotas: the tenant's over the defaults")
    usage: dict[str, QuotaUse] = Field(description="per quota: its limit and the use now")
    created_at: datetime
    updated_at: datetime
