"""Typed event contracts. Every event carries event_id, occurred_at, tenant_id, schema_version."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every event. ``routing_key`` is the topic it is published under."""

    type: ClassVar[str]
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: datetime = Field(default_factory=utcnow)
    tenant_id: uuid.UUID | None = None
    schema_version: int = 1

    @property
    def routing_key(self) -> str:
        return self.type

    @property
    def publish_delay_ms(self) -> int | None:
        """Published through a delay queue when set: routed only after this long."""
        return None

    def to_bytes(self) -> bytes:
        return orjson.dumps({"type": self.type, **self.model_dump(mode="json")})


class JobSubmitted(Event):
    """No longer published: a submission wakes the scheduler by PostgreSQL NOTIFY
    (``shared.db.wakeup``). Parsed, so that a message queued by an earlier release is
    understood."""

    type: ClassVar[str] = "job.submitted"
    job_id: uuid.UUID
    kernel: str
    device: str
    priority: int


class JobDispatched(Event):
    """A job sent to a device's work queue. Routed as ``job.dispatch.<device>``."""

    type: ClassVar[str] = "job.dispatch"
    job_id: uuid.UUID
    device: Literal["cpu", "cuda"]
    kernel: str

    @property
    def routing_key(self) -> str:
        return f"{self.type}.{self.device}"


class ChunkDispatched(Event):
    """A chunk of an array's elements (``shared.jobs.chunks``) sent to a device's work
    queue: on the same queue as ``JobDispatched`` (routed as ``job.dispatch.<device>``),
    told apart by its type."""

    type: ClassVar[str] = "chunk.dispatch"
    chunk_id: uuid.UUID
    device: Literal["cpu", "cuda"]
    kernel: str

    @property
    def routing_key(self) -> str:
        return f"{JobDispatched.type}.{self.device}"


class JobFinished(Event):
    """An attempt ended: the job is final, or back to QUEUED for a retry. No longer
    published (a NOTIFY wakes the scheduler, ``shared.db.wakeup``); parsed, so that a message
    queued by an earlier release is understood."""

    type: ClassVar[str] = "job.finished"
    job_id: uuid.UUID
    attempt: int
    state: str
    cpu_seconds: float = 0.0
    gpu_seconds: float = 0.0


class JobRetryDue(Event):
    """A retried job's backoff has ended (published through a delay queue when the retry is
    decided): the scheduler may dispatch it. ``jobs.run_after`` stays the durable truth; a
    lost wake-up only waits for the dispatch loop's next pass."""

    type: ClassVar[str] = "job.retry"
    job_id: uuid.UUID
    attempt: int
    delay_ms: int

    @property
    def publish_delay_ms(self) -> int | None:
        return self.delay_ms


class JobCancelled(Event):
    """A job was cancelled; the worker running it (if any) stops it."""

    type: ClassVar[str] = "job.cancelled"
    job_id: uuid.UUID
    worker: str | None = None


class JobPreempted(Event):
    """The scheduler asks ``worker`` to checkpoint the job and let it go (a higher-priority
    job waits for its slot)."""

    type: ClassVar[str] = "job.preempted"
    job_id: uuid.UUID
    worker: str


class TenantChanged(Event):
    """A tenant, its quotas or its keys changed: gateways drop what they cached about it."""

    type: ClassVar[str] = "tenant.changed"
    what: str


class MigrationRequested(Event):
    """A dataset migration was recorded (PENDING); the datamover starts it when it may."""

    type: ClassVar[str] = "migration.requested"
    migration_id: uuid.UUID
    dataset: str
    to_tier: str
    mode: str


class MigrationFinished(Event):
    """A migration reached a final state (SUCCEEDED or FAILED), published with that state.
    ``job_id`` names the job it stages inputs in for, if any: the scheduler dispatches it."""

    type: ClassVar[str] = "migration.finished"
    migration_id: uuid.UUID
    dataset: str
    to_tier: str
    state: str
    job_id: uuid.UUID | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        JobSubmitted,
        JobDispatched,
        ChunkDispatched,
        JobFinished,
        JobRetryDue,
        JobCancelled,
        JobPreempted,
        TenantChanged,
    )
}
EVENT_TYPES[MigrationRequested.type] = MigrationRequested
EVENT_TYPES[MigrationFinished.type] = MigrationFinished


class UnknownEvent(ValueError):
    pass


def parse_event(body: bytes) -> Event:
    """Decode a message body into its typed event; raise ``UnknownEvent`` for garbage."""
    try:
        data: dict[str, Any] = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UnknownEvent("body is not JSON") from exc
    if not isinstance(data, dict):
        raise UnknownEvent("body is not an object")
    cls = EVENT_TYPES.get(str(data.pop("type", "")))
    if cls is None:
        raise UnknownEvent("unknown event type")
    try:
        return cls.model_validate(data)
    except ValueError as exc:
        raise UnknownEvent(f"invalid {cls.type}: {exc}") from exc
