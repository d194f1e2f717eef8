"""Dataset shapes of the public contract."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field, field_validator


class DatasetOut(BaseModel):
    name: str
    size: int
    checksum: str = Field(description='"xxh3-128:<hex>" of the bytes')
    tier: str = Field(description="the tier reads come from")
    tiers: list[str] = Field(description="every tier that holds a verified copy")
    produced_by: str | None = Field(
        default=None, description="the job whose outputs these bytes are (null for an upload)"
    )
    created_at: datetime
    updated_at: datetime

    @field_validator("produced_by", mode="before")
    @classmethod
    def _job_id(cls, value: object) -> object:
        return str(value) if isinstance(value, uuid.UUID) else value


class DatasetList(BaseModel):
    items: list[DatasetOut]
    next_cursor: str | None


class TierOut(BaseModel):
    name: str
    kind: str = Field(description='"file" (a directory) or "s3" (an S3-compatible bucket)')
    default: bool = Field(description="where uploads and job outputs go when none is named")


class TierList(BaseModel):
    items: list[TierOut] = Field(description="the configured tiers: the only ones accepted")
