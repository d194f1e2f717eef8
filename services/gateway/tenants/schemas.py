"""Tenant and key shapes of the public contract (``/v1/tenants``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.security import SCOPES
from shared.validation import INTEGRAL, JsonInt

# Counts are checked in 32-bit columns and statements; bytes and seconds in 64-bit ones, up
# to the largest integer a JSON client holds exactly (a double's 53 bits).
INT32_MAX = 2**31 - 1
JSON_INT_MAX = 2**53 - 1
# The lowest rate limit: one request every 100 s. Below it a tenant is in effect locked out,
# which is what ``suspended`` is for.
MIN_REQUESTS_PER_SECOND = 0.01


class Quotas(BaseModel):
    """A tenant's quotas; a field left out (or null) means the platform default. Numbers are
    strict (``true`` is not 1). 0 is a real limit for the counts (``max_running_jobs`` 0 holds
    every job in the queue; ``max_queued_jobs`` 0 refuses every submission); the rate is at
    least ``MIN_REQUESTS_PER_SECOND``."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    max_running_jobs: Annotated[int, Field(ge=0, le=INT32_MAX), INTEGRAL] | None = None
    max_queued_jobs: Annotated[int, Field(ge=0, le=INT32_MAX), INTEGRAL] | None = None
    cpu_seconds_per_day: Annotated[int, Field(ge=0, le=JSON_INT_MAX), INTEGRAL] | None = None
    storage_bytes: Annotated[int, Field(ge=0, le=JSON_INT_MAX), INTEGRAL] | None = None
    requests_per_second: float | None = Field(
        default=None, ge=MIN_REQUESTS_PER_SECOND, le=1_000_000
    )


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    weight: JsonInt = Field(default=1, ge=1, le=1000)
    quotas: Quotas = Field(default_factory=Quotas)


class TenantPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    weight: Annotated[int, Field(ge=1, le=1000), INTEGRAL] | None = None
    quotas: Quotas | None = None
    suspended: bool | None = None


class TenantOut(BaseModel):
    id: uuid.UUID
    name: str
    weight: int
    quotas: dict[str, Any]
    suspended: bool
    created_at: datetime
    updated_at: datetime


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    scopes: list[str] | None = None

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        unknown = sorted(set(v) - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown scopes {unknown}; known: {list(SCOPES)}")
        return sorted(set(v))


class KeyCreated(BaseModel):
    id: uuid.UUID
    key: str = Field(description="the secret; shown only in this response")
    prefix: str
    name: str
    scopes: list[str]
    created_at: datetime


class KeyOut(BaseModel):
    """A key as listed: never its secret nor its hash."""

    id: uuid.UUID
    name: str
    prefix: str = Field(description="the first characters of the secret, to recognise it by")
    scopes: list[str]
    state: Literal["active", "revoked"]
    created_at: datetime
    revoked_at: datetime | None


class KeyList(BaseModel):
    items: list[KeyOut]
    next_cursor: str | None


class TenantList(BaseModel):
    items: list[TenantOut]
    next_cursor: str | None
