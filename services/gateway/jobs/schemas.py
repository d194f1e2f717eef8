"""Job shapes of the public contract."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from shared.storage.names import NAME_SCHEMA, name_problem
from shared.validation import INTEGRAL, JsonInt


def _dataset_name(name: str) -> str:
    """The rule of uploads (``name_problem``): a name stays in the tenant's own namespace."""
    problem = name_problem(name)
    if problem is not None:
        message = "invalid dataset name: {problem}"
        raise PydanticCustomError("dataset_name", message, {"problem": problem})
    return name


DatasetName = Annotated[str, AfterValidator(_dataset_name), WithJsonSchema(NAME_SCHEMA)]
# An input or output of a kernel (``GET /v1/kernels`` lists them).
IoName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


LabelKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")]
# Printable text: no control characters (PostgreSQL JSON cannot even store NUL).
LabelValue = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]


class JobSubmit(BaseModel):
    # Strict: a bool is not an integer, a string is not a number.
    model_config = ConfigDict(extra="forbid", strict=True)

    kernel: str = Field(min_length=1, max_length=100)
    device: Literal["cpu", "cuda", "any"] = "any"
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[IoName, DatasetName] = Field(default_factory=dict, max_length=64)
    outputs: dict[IoName, DatasetName] = Field(default_factory=dict, max_length=64)
    output_tier: str = Field(
        default="local",
        min_length=1,
        max_length=32,
        description="the configured storage tier the outputs are published on",
    )
    priority: JsonInt = Field(default=5, ge=0, le=9, description="9 runs first")
    timeout_s: Annotated[int, Field(ge=1, le=7 * 86_400), INTEGRAL] | None = None
    max_retries: Annotated[int, Field(ge=0, le=20), INTEGRAL] | None = None
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)


def _id_text(value: object) -> object:
    return str(value) if isinstance(value, uuid.UUID) else value


# A job's id: a UUID, or ``"{array_id}:{index}"`` for an element of an array.
JobId = Annotated[
    str,
    BeforeValidator(_id_text),
    Field(description='a UUID, or "{array_id}:{index}" for an element of an array'),
]


class ArrayOut(BaseModel):
    """An array's settings and its elements' counts by state."""

    size: int
    index_param: str | None = None
    max_concurrent: int | None = None
    counts: dict[str, int]


class JobOut(BaseModel):
    id: JobId
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
    array_id: Annotated[str | None, BeforeValidator(_id_text)] = Field(
        default=None, description="an element's array"
    )
    array_index: int | None = Field(default=None, description="an element's index in its array")
    array: ArrayOut | None = Field(default=None, description="an array's settings and counts")


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None
