"""Migration shapes of the public contract."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MigrationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=255)
    to_tier: str = Field(min_length=1, max_length=32)
    mode: Literal["copy", "move"] = "copy"


class MigrationOut(BaseModel):
    id: uuid.UUID
    dataset: str
    from_tier: str
    to_tier: str
    mode: str
    state: str
    bytes_total: int
    bytes_done: int
    bytes_copied: int = Field(description="bytes written to the target, re-copies included")
    checksum: str | None = Field(description="the source's checksum, which the copy must match")
    error: str | None
    attempts: int = Field(description="how many times a datamover started or resumed it")
    job_id: uuid.UUID | None = Field(default=None, description="the job it stages data for")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class MigrationList(BaseModel):
    items: list[MigrationOut]
    next_cursor: str | None
