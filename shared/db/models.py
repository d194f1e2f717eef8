"""ORM models: the whole schema in one place. Migrations live in ``migrations/`` (Alembic)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    REAL,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_STATES = ("PENDING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, nullable=False)
    weight: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    quotas: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    suspended: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (CheckConstraint("weight >= 1", name="weight_positive"),)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    prefix: Mapped[str] = mapped_column(String(32), nullable=False)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False, unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    """A job's row. The raw statements that read and write it take their columns from here
    (``shared.jobs.row``); docs/ARCHITECTURE.md, "Adding a job field", says what else a new
    column needs."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    kernel: Mapped[str] = mapped_column(String(100), nullable=False)
    device: Mapped[str] = mapped_column(String(8), nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    labels: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    # the tier the worker publishes the outputs on
    output_tier: Mapped[str] = mapped_column(
        String(32), nullable=False, default="local", server_default="local"
    )
    priority: Mapped[int] = mapped_column(SmallInteger, nullable=False, default=0)
    timeout_s: Mapped[int] = mapped_column(Integer, nullable=False)
    max_retries: Mapped[int] = mapped_column(Integer, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="PENDING")
    state_reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    assigned_device: Mapped[str | None] = mapped_column(String(8))
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    run_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # SHA-256 (hex) of the request that carried ``idempotency_key``
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # An array's own row (its ``job_arrays`` row has the rest): never dispatched itself; its
    # state is derived from its elements' counts by the database (``shared.jobs.arrays``).
    is_array: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )
    # An element's array and index; its id is ``shared.jobs.arrays.element_id``.
    array_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    array_index: Mapped[int | None] = mapped_column(Integer)
    # how far the running attempt is, 0.0-1.0 (the worker writes it every 2 s; migration 0019)
    progress: Mapped[float | None] = mapped_column(Float)
    # checkpoints (migration 0027): how often a checkpointing kernel saves its state (0: never),
    # how many it saved, how often the job was moved off a running worker (a preemption or
    # a drain: no retry used), and the step or stream count it last resumed from
    checkpoint_interval_s: Mapped[int] = mapped_column(
        Integer, nullable=False, default=30, server_default=text("30")
    )
    checkpoints: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    preemptions: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    resumed_from: Mapped[int | None] = mapped_column(BigInteger)
    # ``{"url", "events"}``: where this job's (or array's) state changes are POSTed; a trigger
    # writes each delivery in the transaction of the change (migration 0021)
    notify: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    # what the job waits on, as submitted (``[{"job", "condition"}]``), and how many of those
    # dependencies are not settled yet: admission and materialisation take only rows with
    # ``deps_left = 0`` (``shared.jobs.deps``, migration 0022)
    depends_on: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    deps_left: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default=text("0")
    )
    # the workflow the job is a step of
    workflow_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("workflows.id", ondelete="SET NULL")
    )
    # a SUCCEEDED job's provenance, written by the database when it succeeds (migration 0022)
    receipt: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # the pinned inputs' checksums (``{input: checksum}``), held at submit and at admission
    # (migration 0024)
    pins: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))

    __table_args__ = (
        CheckConstraint(f"state IN {JOB_STATES!r}", name="state_known"),
        CheckConstraint("device IN ('cpu', 'cuda', 'any')", name="device_known"),
        CheckConstraint("priority BETWEEN 0 AND 9", name="priority_range"),
        CheckConstraint(
            "checkpoint_interval_s BETWEEN 0 AND 86400", name="checkpoint_interval_range"
        ),
        CheckConstraint("deps_left >= 0", name="deps_left_natural"),
        Index(
            "ix_jobs_workflow_id", "workflow_id", postgresql_where=text("workflow_id IS NOT NULL")
        ),
        UniqueConstraint("tenant_id", "idempotency_key"),
        # ``GET /v1/jobs``: the jobs it lists, never an array's elements (migration 0016)
        Index(
            "ix_jobs_tenant_created",
            "tenant_id",
            "created_at",
            "id",
            postgresql_where=text("array_id IS NULL"),
        ),
        Index("ix_jobs_tenant_state_created", "tenant_id", "state", "created_at", "id"),
        Index(
            "ix_jobs_dispatchable",
            "priority",
            "created_at",
            postgresql_where="state = 'QUEUED' AND dispatched_at IS NULL",
        ),
        Index(
            "ix_jobs_active",
            "state",
            "assigned_device",
            postgresql_where="state IN ('QUEUED', 'RUNNING')",
        ),
        Index("ix_jobs_pending", "created_at", "id", postgresql_where=text("state = 'PENDING'")),
        # the jobs that hold a slot (``shared.jobs.usage.IN_FLIGHT``), counted per tenant and
        # per device by every dispatch pass: without the waiting backlog (migration 0031)
        Index(
            "ix_jobs_in_flight",
            "tenant_id",
            "assigned_device",
            postgresql_where=text(
                "NOT is_array AND (state = 'RUNNING' OR (state = 'QUEUED'"
                " AND dispatched_at IS NOT NULL))"
            ),
        ),
        Index(
            "ix_jobs_tenant_dispatchable",
            "tenant_id",
            text("priority DESC"),
            "created_at",
            "id",
            postgresql_where=text("state = 'QUEUED' AND dispatched_at IS NULL"),
        ),
        # ``GET /v1/jobs?label=k:v``; only labelled jobs that it lists (no elements), so
        # unlabelled submissions and elements skip it
        Index(
            "ix_jobs_labelled",
            "labels",
            postgresql_using="gin",
            postgresql_ops={"labels": "jsonb_path_ops"},
            postgresql_where=text("labels <> '{}'::jsonb AND array_id IS NULL"),
        ),
        Index(
            "ix_jobs_array_element",
            "array_id",
            "array_index",
            unique=True,
            postgresql_where=text("array_id IS NOT NULL"),
        ),
        # ``max_queued_jobs``' count under the submission lock (``jobs_waiting``, migrations
        # 0015 and 0026): a tenant's ready jobs outside arrays, and its ready arrays that are
        # not final, each read from an index alone, whatever else the tenant's rows are
        Index(
            "ix_jobs_tenant_waiting",
            "tenant_id",
            postgresql_where=text(
                "state IN ('PENDING', 'QUEUED') AND NOT is_array AND array_id IS NULL"
                " AND deps_left = 0"
            ),
        ),
        Index(
            "ix_jobs_tenant_open_arrays",
            "tenant_id",
            postgresql_where=text("is_array AND state IN ('PENDING', 'RUNNING') AND deps_left = 0"),
        ),
        # the jobs and arrays that wait on dependencies (``jobs_held``, migration 0026)
        Index(
            "ix_jobs_tenant_held",
            "tenant_id",
            postgresql_where=text(
                "deps_left > 0 AND state IN ('PENDING', 'RUNNING') AND array_id IS NULL"
            ),
        ),
    )


class JobArray(Base):
    """An array's settings and its elements' counts by state, kept by the database: a
    statement-level trigger on ``jobs`` adds each statement's state changes of elements, so
    reading the counts is one row whatever the array's size. Elements are materialised as
    ``jobs`` rows only when the scheduler is about to run them (indices from ``next_index``
    up); the rest exist only as ``n_pending`` (``shared.jobs.arrays``)."""

    __tablename__ = "job_arrays"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    index_param: Mapped[str | None] = mapped_column(String(100))
    max_concurrent: Mapped[int | None] = mapped_column(Integer)
    # ``overrides[i]`` merged over the params of element i; null when none were given
    overrides: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    # the lowest index not materialised yet
    next_index: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # the array was cancelled: no more elements are materialised
    cancelled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    n_pending: Mapped[int] = mapped_column(Integer, nullable=False)
    n_queued: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    n_running: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    n_succeeded: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    n_cancelled: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    n_timed_out: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # the measured wall time of one element, seconds (an EWMA over the flushes of its
    # chunks, ``shared.jobs.chunks``); null until a chunk recorded one
    element_wall_s: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        CheckConstraint("size >= 1", name="size_positive"),
        CheckConstraint("max_concurrent IS NULL OR max_concurrent >= 1", name="max_positive"),
        CheckConstraint(
            "n_pending >= 0 AND n_queued >= 0 AND n_running >= 0 AND n_succeeded >= 0"
            " AND n_failed >= 0 AND n_cancelled >= 0 AND n_timed_out >= 0",
            name="counts_natural",
        ),
        # the scheduler's scan for arrays with elements left to materialise
        Index(
            "ix_job_arrays_open",
            "tenant_id",
            postgresql_where=text("NOT cancelled AND next_index < size"),
        ),
    )


class ArrayChunk(Base):
    """A contiguous range of an array's elements, ``[first_index, first_index + n)``, that
    is dispatched, claimed and recorded as one (``shared.jobs.chunks``). Its elements have
    no ``jobs`` row until they end; the flush that records the last one deletes the chunk.
    ``attempt`` counts claims (the fencing token of the claim's flushes)."""

    __tablename__ = "array_chunks"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    array_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    # the queue it was dispatched to (null until dispatched)
    device: Mapped[str | None] = mapped_column(String(8))
    first_index: Mapped[int] = mapped_column(Integer, nullable=False)
    n: Mapped[int] = mapped_column(Integer, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("n >= 1", name="n_positive"),
        Index("ix_array_chunks_array_id_first_index", "array_id", "first_index", unique=True),
        # the dispatch pass's chunks waiting to be sent, per tenant
        Index(
            "ix_array_chunks_tenant_id",
            "tenant_id",
            postgresql_where=text("dispatched_at IS NULL AND worker IS NULL"),
        ),
    )


class JobDep(Base):
    """An edge from a job to a dependency that is not settled yet (``shared.jobs.deps``): the
    release deletes it when the dependency is final. ``dep_id`` is a job's, an array's or an
    element's id (an element may have no row yet: ``dep_array`` is then its array)."""

    __tablename__ = "job_deps"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    dep_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    dep_array: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    condition: Mapped[str] = mapped_column(String(16), nullable=False)

    __table_args__ = (
        CheckConstraint(
            "condition IN ('afterok', 'afternotok', 'afterany', 'aftercorr')",
            name="condition_known",
        ),
        Index("ix_job_deps_dep_id", "dep_id"),
        Index("ix_job_deps_dep_array", "dep_array", postgresql_where=text("dep_array IS NOT NULL")),
    )


class Workflow(Base):
    """A named graph of jobs submitted together; ``steps`` maps each step's name to its job
    id. Its state is its steps' (``services.gateway.workflows``)."""

    __tablename__ = "workflows"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    steps: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    cancelled: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_workflows_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
    )


class JobEvent(Base):
    """Every state change of every job, in order: the job's history."""

    __tablename__ = "job_events"
    # the events feed reads a tenant's rows after an id (services/gateway/events/)
    __table_args__ = (Index("ix_job_events_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    # the job's tenant (migration 0018: a trigger fills it in when an insert leaves it out)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False, server_default="state")
    progress: Mapped[float | None] = mapped_column(REAL)  # kind 'progress': 0.0-1.0
    # kind 'checkpoint' (migration 0029): the step (or stream) saved or resumed from, and the
    # job's checkpoints so far
    step: Mapped[int | None] = mapped_column(BigInteger)
    checkpoints: Mapped[int | None] = mapped_column(Integer)
    # kind 'progress' of an array, written by a chunk's flush (migration 0028): its counts
    counts: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    from_state: Mapped[str] = mapped_column(String(16), nullable=False)
    to_state: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    at: Mapped[datetime] = _now()


class MigrationEvent(Base):
    """Every state a migration takes, written by a trigger on ``migrations``; its ids come from
    ``job_events``' sequence, so that the events feed has one order."""

    __tablename__ = "migration_events"
    __table_args__ = (Index("ix_migration_events_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, server_default=text("nextval('job_events_id_seq')")
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    migration_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("migrations.id", ondelete="CASCADE"), nullable=False
    )
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    at: Mapped[datetime] = _now()


class WorkflowEvent(Base):
    """Every state a workflow takes after PENDING, written by a deferred trigger on its steps'
    ``jobs`` rows (migration 0024); ids from ``job_events``' sequence, as migrations'."""

    __tablename__ = "workflow_events"
    __table_args__ = (
        Index("ix_workflow_events_tenant_id_id", "tenant_id", "id"),
        Index("ix_workflow_events_workflow_id_id", "workflow_id", "id"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, server_default=text("nextval('job_events_id_seq')")
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    workflow_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workflows.id", ondelete="CASCADE"), nullable=False
    )
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    at: Mapped[datetime] = _now()


class JobAttempt(Base):
    """One row per attempt that ended, with the resources it used (counted once)."""

    __tablename__ = "job_attempts"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False, index=True)
    worker: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    cpu_seconds: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    gpu_seconds: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    wall_seconds: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    finished_at: Mapped[datetime] = _now()
    # what GET /v1/jobs/{id}/attempts shows (migration 0019)
    device: Mapped[str | None] = mapped_column(String(8))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_job_attempts_tenant_finished", "tenant_id", "finished_at"),)


class ChunkAttempt(Base):
    """The attempts of the array elements that one flush of a chunk recorded, index by index
    (one row per flush, not per element); with ``job_attempts`` they make the view
    ``attempt_records``, the one source of usage (migration 0028)."""

    __tablename__ = "chunk_attempts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    array_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    worker: Mapped[str | None] = mapped_column(String(200))
    device: Mapped[str | None] = mapped_column(String(8))
    finished_at: Mapped[datetime] = _now()
    first_index: Mapped[int] = mapped_column(Integer, nullable=False)
    last_index: Mapped[int] = mapped_column(Integer, nullable=False)
    indices: Mapped[list[int]] = mapped_column(ARRAY(Integer), nullable=False)
    outcomes: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    cpu_seconds: Mapped[list[float]] = mapped_column(ARRAY(Float), nullable=False)
    wall_seconds: Mapped[list[float]] = mapped_column(ARRAY(Float), nullable=False)
    started_at: Mapped[list[datetime]] = mapped_column(
        ARRAY(DateTime(timezone=True)), nullable=False
    )
    errors: Mapped[list[str | None]] = mapped_column(ARRAY(Text), nullable=False)

    __table_args__ = (
        Index("ix_chunk_attempts_array_index", "array_id", "first_index"),
        Index("ix_chunk_attempts_tenant_finished", "tenant_id", "finished_at"),
        CheckConstraint(
            "cardinality(outcomes) = cardinality(indices)"
            " AND cardinality(cpu_seconds) = cardinality(indices)"
            " AND cardinality(wall_seconds) = cardinality(indices)"
            " AND cardinality(started_at) = cardinality(indices)"
            " AND cardinality(errors) = cardinality(indices)",
            name="same_lengths",
        ),
    )


class PreemptionGap(Base):
    """When a scheduler last preempted a job in a pool, on the database's clock, so that
    ``STRATUS_PREEMPT__MIN_GAP_S`` holds across restarts and between schedulers (migration
    0029)."""

    __tablename__ = "preemption_gaps"

    pool: Mapped[str] = mapped_column(String(16), primary_key=True)
    last_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class JobLogLine(Base):
    """A line of a job's log that the worker wrote besides its transitions (staging,
    progress), in batches; ``GET /v1/jobs/{id}/log`` merges them with ``job_events`` and
    ``job_attempts``."""

    __tablename__ = "job_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    at: Mapped[datetime] = _now()
    line: Mapped[str] = mapped_column(Text, nullable=False)

    __table_args__ = (Index("ix_job_log_job_at", "job_id", "at", "id"),)


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    device: Mapped[str] = mapped_column(String(8), nullable=False)
    concurrency: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = _now()
    heartbeat_at: Mapped[datetime] = _now()
    stopping: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # the versions a job's receipt names (stratus, numba, numpy, python), from the heartbeat
    software: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # how long its recent jobs held their slot (an exponential average; NULL before the
    # first), from the heartbeat: the scheduler dispatches further ahead of short jobs
    run_s: Mapped[float | None] = mapped_column(Float)


class WorkerPool(Base):
    """The autoscaler's view of one worker pool (``cpu``, ``cuda``), written by the scheduler
    on every pass and read by ``GET /v1/admin/pools``."""

    __tablename__ = "worker_pools"

    pool: Mapped[str] = mapped_column(String(16), primary_key=True)
    backend: Mapped[str] = mapped_column(String(32), nullable=False)
    min_workers: Mapped[int] = mapped_column(Integer, nullable=False)
    max_workers: Mapped[int] = mapped_column(Integer, nullable=False)
    target_jobs_per_worker: Mapped[float] = mapped_column(Float, nullable=False)
    cooldown_s: Mapped[float] = mapped_column(Float, nullable=False)
    current_workers: Mapped[int] = mapped_column(Integer, nullable=False)
    desired_workers: Mapped[int] = mapped_column(Integer, nullable=False)
    queued_jobs: Mapped[int] = mapped_column(Integer, nullable=False)
    running_jobs: Mapped[int] = mapped_column(Integer, nullable=False)
    # waiting jobs that are not demand (tenant quota, suspended, retry backoff, stage-in)
    held_jobs: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    over_provisioned_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # the last scaling decisions (up/down), newest last: [{"at", "action", "from", "to", ...}]
    decisions: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")
    )
    updated_at: Mapped[datetime] = _now()


class Outbox(Base):
    """Events written in the same transaction as the change they announce; a relay publishes."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False, unique=True)
    routing_key: Mapped[str] = mapped_column(String(200), nullable=False)
    body: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = _now()
    delay_ms: Mapped[int | None] = mapped_column(Integer)  # through a delay queue


MIGRATION_STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED")


class Dataset(Base):
    """A tenant's named bytes. ``tier`` is where reads come from; ``tiers`` every tier that
    holds a verified copy (``tier`` included). The object lives at ``<tenant_id>/<name>``."""

    __tablename__ = "datasets"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    checksum: Mapped[str] = mapped_column(String(80), nullable=False)
    tier: Mapped[str] = mapped_column(String(32), nullable=False)
    tiers: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    # the job whose record wrote these bytes (null for an upload; migration 0022)
    produced_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("size >= 0", name="size_non_negative"),
        UniqueConstraint("tenant_id", "name"),
        Index("ix_datasets_tenant_created", "tenant_id", "created_at", "id"),
    )


class Migration(Base):
    """A request to copy or move a dataset to another tier, and its progress."""

    __tablename__ = "migrations"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    dataset: Mapped[str] = mapped_column(String(255), nullable=False)
    from_tier: Mapped[str] = mapped_column(String(32), nullable=False)
    to_tier: Mapped[str] = mapped_column(String(32), nullable=False)
    mode: Mapped[str] = mapped_column(String(8), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="PENDING")
    bytes_total: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # Every byte written to the target, re-copies after a crash included.
    bytes_copied: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    checksum: Mapped[str | None] = mapped_column(String(80))
    error: Mapped[str | None] = mapped_column(Text)
    chunk_bytes: Mapped[int | None] = mapped_column(BigInteger)
    upload: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # the target's partial state
    owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # SHA-256 (hex) of the request that carried ``idempotency_key``
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(f"state IN {MIGRATION_STATES!r}", name="state_known"),
        CheckConstraint("mode IN ('copy', 'move')", name="mode_known"),
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_migrations_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_migrations_tenant_state_created", "tenant_id", "state", "created_at", "id"),
        Index(
            "ix_migrations_active",
            "state",
            "created_at",
            postgresql_where="state IN ('PENDING', 'RUNNING')",
        ),
        Index("ix_migrations_job_id", "job_id", postgresql_where="job_id IS NOT NULL"),
    )


class MigrationChunk(Base):
    """One chunk of a migration copied to the target (its part ETag on S3): resume points."""

    __tablename__ = "migration_chunks"

    migration_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("migrations.id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    etag: Mapped[str | None] = mapped_column(String(200))


class StorageReservation(Base):
    """Bytes held against a tenant's ``storage_bytes`` quota by an upload, a job's output or
    a copy in progress (``shared.storage.quota``). ``expires_at`` frees the bytes of a
    writer that died; a copy's reservation (its migration's id) has none and ends with it."""

    __tablename__ = "storage_reservations"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("bytes >= 0", name="bytes_non_negative"),
        Index("ix_storage_reservations_tenant", "tenant_id"),
    )


class AuditEntry(Base):
    """Who did what to which tenant, and when: creations, revocations, quota changes, admin
    reads. Written in the transaction of the change it records."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = _now()
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    target: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)

    __table_args__ = (Index("ix_audit_log_tenant_at", "tenant_id", "at"),)


class UsageHour(Base):
    """A tenant's attempts summed by the hour (UTC) in which they ended, kept by a trigger on
    ``job_attempts`` (migration 0014), so the dispatch pass reads a day of hourly rows per
    tenant, not a day of attempts (``shared.jobs.usage``). ``cpu_moment_s``: the sum of each
    attempt's CPU seconds times its seconds into the hour, where the CPU time lies in it."""

    __tablename__ = "usage_hours"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False)
    cpu_seconds: Mapped[float] = mapped_column(Float, nullable=False)
    gpu_seconds: Mapped[float] = mapped_column(Float, nullable=False)
    cpu_moment_s: Mapped[float] = mapped_column(Float, nullable=False)


class WebhookSecret(Base):
    """A tenant's signing secret for its webhooks (``POST /v1/tenant/webhook-secret``), which
    must be readable to sign: AES-GCM under the operator's ``STRATUS_WEBHOOKS__SECRET_KEY``
    when set (``shared.webhooks.seal``)."""

    __tablename__ = "webhook_secrets"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    sealed: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = _now()


class WebhookDelivery(Base):
    """One POST of a job's ``notify``, written by a trigger on ``jobs`` in the transaction of
    the state change (the outbox of webhooks), sent and retried by the scheduler
    (``services.scheduler.webhooks``)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    url: Mapped[str] = mapped_column(Text, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    # pending (sent at next_attempt_at), delivered, or failed (given up)
    state: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    next_attempt_at: Mapped[datetime] = _now()
    created_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="state_known"),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("state = 'pending'"),
        ),
        Index(
            "ix_webhook_deliveries_finished",
            "finished_at",
            postgresql_where=text("state <> 'pending'"),
        ),
    )
