"""The API's resources as typed models (API version 1).

Every model keeps fields it does not know (``extra="allow"``): the service adds fields within
a version, and an older client reads them as attributes instead of failing."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class JobState(StrEnum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"


FINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)


class Kernel(_Model):
    name: str
    description: str
    devices: list[str]
    params_schema: dict[str, Any]
    inputs: list[str]
    outputs: list[str]


class ArraySpec(_Model):
    """``array`` of a submission: ``size`` elements; element ``i`` runs with ``params``, then
    ``overrides[i]`` over them, then ``index_param`` set to ``i``; ``{index}`` in a dataset
    name becomes ``i``."""

    size: int
    index_param: str | None = None
    max_concurrent: int | None = None
    overrides: list[dict[str, Any]] | None = None


class ArrayStatus(_Model):
    """An array's settings and its elements' counts by state."""

    size: int
    index_param: str | None = None
    max_concurrent: int | None = None
    counts: dict[str, int] = Field(default_factory=dict)


class Job(_Model):
    """A job, an array (``array`` set) or an element of one (``array_id``/``array_index``
    set; its id is ``"{array_id}:{index}"``)."""

    id: str
    kernel: str
    device: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    output_tier: str | None = None
    priority: int = 5
    timeout_s: int | None = None
    max_retries: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    state: str
    state_reason: str | None = None
    attempts: int = 0
    created_at: datetime
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    worker: str | None = None
    progress: float | None = None
    assigned_device: str | None = None
    array_id: str | None = None
    array_index: int | None = None
    array: ArrayStatus | None = None
    depends_on: list[dict[str, str]] | None = None
    workflow_id: str | None = None
    notify: dict[str, Any] | None = None
    receipt: Receipt | None = None

    @property
    def is_final(self) -> bool:
        """Nothing moves the job out of this state any more."""
        return self.state in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == JobState.SUCCEEDED


class Receipt(_Model):
    """What a SUCCEEDED job ran: kernel and its version, params, device, the checksums of
    its inputs and outputs (``{name: {"dataset", "checksum"}}``), the software, the worker
    and the CPU seconds."""

    kernel: str
    kernel_version: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    device: str | None = None
    inputs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    software: dict[str, Any] = Field(default_factory=dict)
    worker: str | None = None
    cpu_seconds: float | None = None


class Workflow(_Model):
    """A named graph of jobs: ``steps`` maps each step's name to its job's id; its
    ``state`` follows its steps' as an array's follows its elements; ``counts``: the steps
    by state."""

    id: str
    name: str
    state: str
    steps: dict[str, str] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict)
    created_at: datetime
    finished_at: datetime | None = None

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == JobState.SUCCEEDED


Job.model_rebuild()  # ``receipt``: a ``Receipt``, defined after it


class WebhookSecret(_Model):
    """The tenant's new webhook signing secret: shown only when it is made."""

    secret: str
    created_at: datetime


class Dataset(_Model):
    name: str
    size: int
    checksum: str
    tier: str
    tiers: list[str] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    produced_by: str | None = None


class Migration(_Model):
    id: str
    dataset: str
    from_tier: str
    to_tier: str
    mode: str
    state: str
    bytes_total: int
    bytes_done: int
    checksum: str | None = None
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None

    @property
    def is_final(self) -> bool:
        return self.state in {"SUCCEEDED", "FAILED"}


class Usage(_Model):
    cpu_seconds: float
    gpu_seconds: float
    jobs: dict[str, int]
    storage_bytes: int
    bytes_moved: int


class QuotaUse(_Model):
    limit: float
    used: float | None = None
    held: float | None = None


class TenantSelf(_Model):
    """``GET /v1/tenant``: the caller's own tenant, its quotas and its use of each."""

    id: str
    name: str
    weight: int
    suspended: bool
    quotas: dict[str, Any]
    usage: dict[str, QuotaUse]
    created_at: datetime
    updated_at: datetime


class Quotas(_Model):
    """A tenant's quotas; a field left out means the platform default."""

    max_running_jobs: int | None = None
    max_queued_jobs: int | None = None
    cpu_seconds_per_day: int | None = None
    storage_bytes: int | None = None
    requests_per_second: float | None = None


class Tenant(_Model):
    id: str
    name: str
    weight: int
    quotas: dict[str, Any]
    suspended: bool
    created_at: datetime
    updated_at: datetime


class ApiKey(_Model):
    """A new API key: ``key`` is the secret, shown only when it is created."""

    id: str
    key: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    name: str | None = None


class KeyInfo(_Model):
    """An API key as listed (``client.admin.keys``): never its secret. ``prefix`` is the
    secret's first characters; ``state`` is ``active`` or ``revoked``."""

    id: str
    name: str
    prefix: str
    scopes: list[str]
    state: str
    created_at: datetime
    revoked_at: datetime | None = None


class WorkerPool(_Model):
    """A worker pool (``cpu``, ``cuda``): its live workers and, when the autoscaler runs it,
    its bounds, demand, current and desired workers and recent decisions."""

    pool: str
    autoscaling: bool
    live_workers: int
    workers: list[dict[str, Any]] = Field(default_factory=list)
    min_workers: int | None = None
    max_workers: int | None = None
    current_workers: int | None = None
    desired_workers: int | None = None
    queued_jobs: int | None = None
    running_jobs: int | None = None


class DeadLetters(_Model):
    """The messages a queue's consumers gave up on: how many wait, and the oldest few."""

    queue: str
    dead_letter_queue: str
    messages: int
    oldest: list[dict[str, Any]] = Field(default_factory=list)


class Event(_Model):
    """One event of ``GET /v1/events``: ``id`` (increasing; resume after it), ``type``
    (``job.state``, ``job.progress``, ``migration.state``, ``workflow.state``) and ``data``
    (``job_id`` | ``migration_id`` | ``workflow_id``, ``state`` | ``progress``, ``at``; an
    element's also ``array_id`` and ``array_index``; an array's ``job.progress`` also
    ``counts``, its elements per state)."""

    id: str | None = None
    type: str = "message"
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def job_id(self) -> str | None:
        value = self.data.get("job_id")
        return None if value is None else str(value)

    @property
    def array_id(self) -> str | None:
        value = self.data.get("array_id")
        return None if value is None else str(value)

    @property
    def state(self) -> str | None:
        value = self.data.get("state")
        return None if value is None else str(value)

    @property
    def progress(self) -> float | None:
        value = self.data.get("progress")
        return None if value is None else float(value)


class Transition(_Model):
    """One change of a job's state (``GET /v1/jobs/{id}/events``)."""

    at: datetime
    state: str
    reason: str | None = None
    attempt: int | None = None
    worker: str | None = None


class Attempt(_Model):
    """One try of a job on a worker (``GET /v1/jobs/{id}/attempts``)."""

    attempt: int
    worker: str | None = None
    device: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cpu_seconds: float | None = None
    gpu_seconds: float | None = None
    outcome: str | None = None
    error: str | None = None


class Page(_Model):
    """One page of a list: its raw items and the cursor of the next page (None: the last)."""

    items: list[dict[str, Any]]
    next_cursor: str | None = None
