"""Scheduler settings: background loops each have ``enabled`` and an interval."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from shared.settings import CommonSettings


class PoolSettings(BaseModel):
    """One worker pool's bounds (``STRATUS_AUTOSCALE__CPU__MAX_WORKERS`` ...)."""

    min_workers: int = Field(default=1, ge=0)
    max_workers: int = Field(default=4, ge=0)
    # demand (queued + running jobs) one worker is sized for; None: the autoscaler's default
    target_jobs_per_worker: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> PoolSettings:
        if self.min_workers > self.max_workers:
            raise ValueError("min_workers must not exceed max_workers")
        return self


class CudaPoolSettings(PoolSettings):
    """The GPU pool scales to zero by default; raise ``max_workers`` where there are GPUs."""

    min_workers: int = Field(default=0, ge=0)
    max_workers: int = Field(default=0, ge=0)


class LocalBackendSettings(BaseModel):
    """``local``: worker processes on this host, supervisord programs started and stopped
    over its XML-RPC socket (``tools.cluster`` writes both)."""

    supervisor_socket: str = "run/supervisor.sock"
    cpu_program: str = "worker"
    cuda_program: str = "cuda_worker"


class DockerBackendSettings(BaseModel):
    """``docker``: the compose service's containers, through the Docker Engine API."""

    socket: str = "/var/run/docker.sock"
    api_version: str = "v1.43"
    project: str = "stratus"
    cpu_service: str = "worker"
    cuda_service: str = "cuda-worker"
    stop_timeout_s: int = 30  # SIGTERM, then SIGKILL after this (> STRATUS_SHUTDOWN_GRACE_S)


class AutoscaleSettings(BaseModel):
    """The autoscaler loop. ``backend``: ``local`` (supervisord on this host), ``docker``
    (compose containers) or ``kubernetes`` (KEDA scales the Deployments; the loop only
    observes and publishes what it would do)."""

    enabled: bool = False
    backend: Literal["local", "docker", "kubernetes"] = "local"
    interval_s: float = 1.0
    cooldown_s: float = 60.0
    target_jobs_per_worker: float = Field(default=4.0, gt=0)
    cpu: PoolSettings = Field(default_factory=PoolSettings)
    cuda: CudaPoolSettings = Field(default_factory=CudaPoolSettings)
    local: LocalBackendSettings = Field(default_factory=LocalBackendSettings)
    docker: DockerBackendSettings = Field(default_factory=DockerBackendSettings)


class PreemptSettings(BaseModel):
    """Preemption through checkpoints (``services.scheduler.preempt``):
    ``STRATUS_PREEMPT__MIN_GAP_S`` is the least time between two preemptions on one pool."""

    enabled: bool = True
    min_gap_s: float = Field(default=60.0, ge=0.0)
    interval_s: float = Field(default=1.0, gt=0.0)


class LeaderSettings(BaseModel):
    """The leader lock (``services.scheduler.leader``): a standby tries it every ``retry_s``;
    the leader checks its connection every ``check_s`` and steps down when a check has not
    answered within ``lease_s`` of the one before."""

    retry_s: float = Field(default=1.0, gt=0.0)
    check_s: float = Field(default=1.0, gt=0.0)
    lease_s: float = Field(default=3.0, gt=0.0)

    @model_validator(mode="after")
    def _lease_after_check(self) -> LeaderSettings:
        if self.lease_s <= self.check_s:
            raise ValueError("leader.lease_s must exceed leader.check_s")
        return self


class SchedulerSettings(CommonSettings):
    port: int = 8001
    dispatch_enabled: bool = True
    dispatch_interval_s: float = 0.5
    # Under load every event wakes the dispatcher: passes woken within this gap of the last
    # one wait for it, so one pass serves all the events of the gap (an idle one runs at once).
    dispatch_min_gap_s: float = Field(default=0.02, ge=0.0, le=1.0)
    # Jobs sent to a device queue beyond the live workers' slots, as a multiple of the slots:
    # a little slack hides the dispatch round trip without letting workers hoard jobs.
    dispatch_slack: float = 4.0
    # ...and beyond that, for workers whose recent jobs were short (their heartbeat says how
    # long), enough to keep their slots busy this long, at most ``dispatch_slack_max`` times
    # their slots: passes come at most every ``dispatch_min_gap_s``, and short jobs would
    # leave the slots idle until the next (``services.scheduler.service.Ahead``).
    dispatch_ahead_s: float = Field(default=0.1, ge=0.0)
    dispatch_slack_max: float = Field(default=16.0, ge=0.0)
    dispatch_batch: int = 500
    # A pass publishes its jobs' dispatch messages itself once it commits (the job's row
    # already says it was dispatched; ``redispatch_after_s`` re-sends one a crash lost), and
    # stages them in the outbox only when the broker refuses. True: every dispatch goes
    # through the outbox (an insert, a delete and the relay's transaction more per job).
    dispatch_outbox: bool = False
    # Array elements get a ``jobs`` row only shortly before they run: each pass materialises
    # up to ``array_window`` live (materialised, not final) elements per array (fewer under
    # the array's ``max_concurrent``) and at most ``array_materialise_max`` in all.
    array_window: int = Field(default=256, ge=1)
    array_materialise_max: int = Field(default=1000, ge=1)
    # Arrays whose elements read and write no datasets run in chunks (``shared.jobs.chunks``):
    # one message, claim and lease for many elements, each chunk sized for about
    # ``array_chunk_target_s`` of work from the measured time of one element, at most
    # ``array_chunk_max`` elements (8 while nothing is measured); while several tenants'
    # arrays contend, the target is multiplied by the tenant's share of their weights.
    array_chunks: bool = True
    array_chunk_target_s: float = Field(default=0.5, gt=0)
    array_chunk_max: int = Field(default=256, ge=1)
    reaper_enabled: bool = True
    reaper_interval_s: float = 2.0
    # ``STRATUS_DB_VACUUM``: for a PostgreSQL server that runs with ``autovacuum = off``,
    # the scheduler vacuums and analyzes the tables a steady load churns, every
    # ``db_vacuum_interval_s``: VACUUM once a table's dead rows reach ``db_vacuum_min_dead_rows``
    # and 20 % of its live rows, ANALYZE once its changes reach as many and half of them
    # (``shared.db.maintenance``). Off by default: a server with autovacuum on (PostgreSQL's
    # default) does this itself, and the loop does nothing there even when on.
    db_vacuum: bool = False
    db_vacuum_interval_s: float = 5.0
    db_vacuum_min_dead_rows: int = Field(default=1000, ge=1)
    worker_ttl_s: float = 15.0
    redispatch_after_s: float = 60.0
    # Fair share: CPU usage decays with this half-life; this many CPU seconds weigh like one
    # job in flight when slots are shared between tenants.
    usage_half_life_s: float = 3600.0
    usage_scale_s: float = 60.0
    # Slots of a device (of at least four times as many) that a tenant alone leaves free, so
    # that a tenant arriving later starts at once instead of after the first one's jobs.
    reserved_slots: int = Field(default=1, ge=0)
    autoscale: AutoscaleSettings = Field(default_factory=AutoscaleSettings)
    preempt: PreemptSettings = Field(default_factory=PreemptSettings)
    leader: LeaderSettings = Field(default_factory=LeaderSettings)
