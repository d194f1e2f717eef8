"""Job shapes of the public contract."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

DatasetName = str


LabelKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")]
# Printable text: no control characters (PostgreSQL JSON cannot even store NUL).
LabelValue = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kernel: str = Field(min_length=1, max_length=100)
    device: Literal["cpu", "cuda", "any"] = "any"
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, DatasetName] = Field(default_factory=dict)
    outputs: dict[str, DatasetName] = Field(default_factory=dict)
    output_tier: str = Field(
        default="local",
        min_length=1,
        max_length=32,
        description="the configured storage tier the outputs are published on",
    )
    priority: int = Field(default=5, ge=0, le=9, description="9 runs first")
    timeout_s: int | None = Field(default=None, ge=1, le=7 * 86_400)
    max_retries: int | None = Field(default=None, ge=0, le=20)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)


class JobOut(BaseModel):
    id: uuid.UUID
    kernel: str
    device: str
    params: dict[str, Any]
    inputs: dict[str, str]
    outputs: dict[str, str]
    output_tier: str
    priority: int
    timeout_s: int
    max_retries: int
    labels: dict[str, str]
    state: str
    state_reason: str | None = Field(
        default=None, description="why the job is where it is (e.g. what a QUEUED job waits for)"
    )
    attempts: int
    created_at: datetime
    queued_at: datetime | None = None
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None
    error: str | None
    worker: str | None


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None
