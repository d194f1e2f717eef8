"""Workflow shapes of the public contract: a named graph of job (or array) submissions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, NotRequired

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, with_config
from typing_extensions import TypedDict

from services.gateway.jobs.schemas import JobSubmit
from shared.jobs.deps import MAX_DEPENDENCIES, Condition

MAX_STEPS = 500
StepName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]


@with_config(ConfigDict(extra="forbid"))
class StepDependency(TypedDict):
    """``{"step": name, "condition"}``: another step of the workflow; or ``{"job": id,
    "condition"}``: a job, array or element submitted before."""

    step: NotRequired[Annotated[str, Field(min_length=1, max_length=63)]]
    job: NotRequired[Annotated[str, Field(min_length=1, max_length=64)]]
    condition: Condition


class WorkflowStep(JobSubmit):
    """A step: a job or array submission whose ``depends_on`` may name other steps."""

    depends_on: list[StepDependency] | None = Field(  # type: ignore[assignment]
        default=None,
        max_length=MAX_DEPENDENCIES,
        description='`{"step": name, "condition"}` or `{"job": id, "condition"}`',
    )


class WorkflowSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # printable text: no control characters (PostgreSQL cannot even store NUL)
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")
    steps: dict[StepName, WorkflowStep] = Field(min_length=1, max_length=MAX_STEPS)


def _id_text(value: object) -> object:
    return str(value) if isinstance(value, uuid.UUID) else value


class WorkflowOut(BaseModel):
    id: Annotated[str, BeforeValidator(_id_text)]
    name: str
    state: str = Field(
        description="PENDING until a step is queued, RUNNING while a step is not final, then"
        " SUCCEEDED if every step succeeded, CANCELLED if it was cancelled, else FAILED"
    )
    steps: dict[str, str] = Field(description="each step's job id")
    counts: dict[str, int] = Field(description="the steps by state")
    created_at: datetime
    finished_at: datetime | None


class WorkflowList(BaseModel):
    items: list[WorkflowOut]
    next_cursor: str | None
