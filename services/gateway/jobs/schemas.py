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
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from shared.jobs.arrays import INDEX
from shared.jobs.deps import MAX_DEPENDENCIES, Dependency
from shared.storage.names import MAX_NAME, NAME_SCHEMA, name_problem
from shared.validation import INTEGRAL, JsonInt


def _dataset_name(name: str) -> None:
    """The rule of uploads (``name_problem``): a name stays in the tenant's own namespace."""
    problem = name_problem(name)
    if problem is not None:
        message = "invalid dataset name: {problem}"
        raise PydanticCustomError("dataset_name", message, {"problem": problem})


# ``{index}`` in a dataset name of an array stands for each element's index. The name rule
# holds whatever digits replace it, except for the length: a template is checked here with
# ``0`` in its place, and the service checks the longest name (the last index) once it knows
# the array's size. A job that is no array may not use it (the service's 422).
_TEMPLATE_FIRST = r"(?:[A-Za-z0-9_-]|\{index\})"
_TEMPLATE_CHAR = r"(?:[A-Za-z0-9._-]|\{index\})"
_TEMPLATE_SEGMENT = (
    rf"(?:{_TEMPLATE_FIRST}{_TEMPLATE_CHAR}*|\.{_TEMPLATE_FIRST}{_TEMPLATE_CHAR}*"
    rf"|\.\.{_TEMPLATE_CHAR}+)"
)
TEMPLATE_PATTERN = rf"^{_TEMPLATE_SEGMENT}(?:/{_TEMPLATE_SEGMENT})*$"
TEMPLATE_SCHEMA = {**NAME_SCHEMA, "pattern": TEMPLATE_PATTERN}


def _dataset_template(name: str) -> str:
    # A template is held to the name's length as given too, as the document says.
    _dataset_name(name if len(name) > MAX_NAME else name.replace(INDEX, "0"))
    return name


DatasetTemplate = Annotated[str, AfterValidator(_dataset_template), WithJsonSchema(TEMPLATE_SCHEMA)]
# An input or output of a kernel (``GET /v1/kernels`` lists them).
IoName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
# A content checksum as datasets show it (``shared.storage.checksum``).
CHECKSUM_PATTERN = r"^(?:xxh3-128|blake3):[0-9a-f]{1,128}$"
# (its pattern is held at admission, ``admission.check_pin_format``, where the 422 can name
# the input: ``["body", "inputs", name, "checksum"]``)
Checksum = Annotated[str, StringConstraints(min_length=1, max_length=200)]
# An input is a dataset name, or pinned: ``{"dataset", "checksum"}`` (the job fails at
# admission if the dataset's bytes are not those). ``JobSubmit`` keeps the names in
# ``inputs`` and the pins apart, in ``pins`` (the ``jobs.pins`` column).
PINNED_SCHEMA = {
    "type": "object",
    "properties": {
        "dataset": TEMPLATE_SCHEMA,
        "checksum": {"type": "string", "pattern": CHECKSUM_PATTERN},
    },
    "required": ["dataset", "checksum"],
    "additionalProperties": False,
}
INPUTS_SCHEMA = {
    "type": "object",
    "maxProperties": 64,
    "additionalProperties": {"anyOf": [TEMPLATE_SCHEMA, PINNED_SCHEMA]},
}


def _split_pins(data: Any) -> Any:
    """A submission's pinned inputs as names in ``inputs`` and checksums in ``pins``; a
    ``pins`` field of its own is no field of the contract (422, as any unknown field)."""
    if not isinstance(data, dict):
        return data
    if "pins" in data:
        raise PydanticCustomError("extra_forbidden", "Extra inputs are not permitted")
    inputs = data.get("inputs")
    if not isinstance(inputs, dict) or not any(isinstance(v, dict) for v in inputs.values()):
        return data
    names: dict[Any, Any] = {}
    pins: dict[Any, Any] = {}
    for key, value in inputs.items():
        if not isinstance(value, dict):
            names[key] = value
            continue
        if set(value) != {"dataset", "checksum"}:
            raise PydanticCustomError(
                "pinned_input", "a pinned input is exactly {{dataset, checksum}}"
            )
        names[key] = value["dataset"]
        pins[key] = value["checksum"]
    return {**data, "inputs": names, "pins": pins}


LabelKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")]
# Printable text: no control characters (PostgreSQL JSON cannot even store NUL).
LabelValue = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]


# The most elements an array may have whatever the operator allows (an index stays an int4
# of nine digits at most, as element ids in routes are read).
ARRAY_SIZE_LIMIT = 1_000_000_000


class ArraySpec(BaseModel):
    """An array of jobs: element ``i`` (0 to ``size`` - 1) runs the kernel with ``params``,
    then ``overrides[i]`` merged over them, then ``index_param`` set to ``i``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    size: Annotated[int, Field(ge=1, le=ARRAY_SIZE_LIMIT), INTEGRAL] = Field(
        description="the number of elements, 1 to the operator's maximum (default 100,000)"
    )
    index_param: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="a param of the kernel that each element gets its index in",
    )
    max_concurrent: Annotated[int, Field(ge=1, le=ARRAY_SIZE_LIMIT), INTEGRAL] | None = Field(
        default=None, description="at most this many elements run at once"
    )
    overrides: list[dict[str, Any]] | None = Field(
        default=None,
        description="element i's params merged over `params`; at most `size` entries",
    )


class NotifySpec(BaseModel):
    """Where a job's (or an array's, as a whole) state changes are POSTed, signed."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="http(s) URL, no user or password; a destination the operator allows",
    )
    events: list[Literal["final", "state"]] = Field(
        min_length=1,
        max_length=2,
        description='"final": one POST when the job is final; "state": one per state change',
    )


class JobSubmit(BaseModel):
    # Strict: a bool is not an integer, a string is not a number.
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _pinned(cls, data: Any) -> Any:
        return _split_pins(data)

    kernel: str = Field(min_length=1, max_length=100)
    device: Literal["cpu", "cuda", "any"] = "any"
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: Annotated[dict[IoName, DatasetTemplate], WithJsonSchema(INPUTS_SCHEMA)] = Field(
        default_factory=dict,
        max_length=64,
        description='a dataset name, or pinned: `{"dataset", "checksum"}`',
    )
    # The pinned inputs' checksums (``_split_pins``): not a field of the contract.
    pins: SkipJsonSchema[dict[IoName, Checksum] | None] = Field(default=None, exclude=False)
    outputs: dict[IoName, DatasetTemplate] = Field(default_factory=dict, max_length=64)
    output_tier: str = Field(
        default="local",
        min_length=1,
        max_length=32,
        description="the configured storage tier the outputs are published on",
    )
    priority: JsonInt = Field(default=5, ge=0, le=9, description="9 runs first")
    timeout_s: Annotated[int, Field(ge=1, le=7 * 86_400), INTEGRAL] | None = None
    max_retries: Annotated[int, Field(ge=0, le=20), INTEGRAL] | None = None
    checkpoint_interval_s: Annotated[int, Field(ge=0, le=86_400), INTEGRAL] = Field(
        default=30,
        description="stencil2d, nbody and montecarlo_pi save a checkpoint at least this often"
        " (seconds; 0: never)",
    )
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)
    array: ArraySpec | None = Field(
        default=None, description="submit an array of jobs (a parameter sweep) in one request"
    )
    notify: NotifySpec | None = Field(
        default=None, description="POST the job's state changes to a URL (webhooks)"
    )
    depends_on: list[Dependency] | None = Field(
        default=None,
        max_length=MAX_DEPENDENCIES,
        description="start only once these jobs, arrays or elements reach the condition",
    )


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
    notify: NotifySpec | None = Field(default=None, description="the job's webhook, if any")
    depends_on: list[Dependency] | None = Field(
        default=None, description="what the job waits on, as submitted"
    )
    workflow_id: Annotated[str | None, BeforeValidator(_id_text)] = Field(
        default=None, description="the workflow the job is a step of"
    )
    receipt: dict[str, Any] | None = Field(
        default=None,
        description='a SUCCEEDED job\'s provenance: {"kernel", "kernel_version", "params",'
        ' "device", "inputs": {name: {"dataset", "checksum"}}, "outputs": {...}, "software":'
        ' {"numba", "numpy", "python"}, "worker", "cpu_seconds"}',
    )

    progress: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="how far the running attempt is (0.0-1.0), refreshed at least every 2 s;"
        " null before it runs, 1.0 once SUCCEEDED",
    )
    assigned_device: str | None = Field(
        default=None, description="the device the scheduler sent the job to (cpu, cuda)"
    )
    checkpoint_interval_s: int = Field(
        default=30, description="how often a checkpointing kernel saves its state (0: never)"
    )
    checkpoints: int = Field(default=0, description="checkpoints saved, every attempt")
    preemptions: int = Field(
        default=0,
        description="times the job was moved off a running worker (preempted or drained),"
        " from its last checkpoint; none uses up a retry",
    )
    resumed_from: int | None = Field(
        default=None,
        description="the step (or sample stream) count of the checkpoint last resumed, or null",
    )

    @model_validator(mode="after")
    def _done_is_whole(self) -> JobOut:
        if self.state == "SUCCEEDED" and self.progress is None:
            self.progress = 1.0  # whatever path recorded it
        return self


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None
