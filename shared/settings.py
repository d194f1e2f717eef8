"""Settings blocks shared by every service (pydantic-settings, ``STRATUS_`` prefix).

Each service composes the blocks it needs into its own settings class and builds it in
``main()`` / ``create_app()``, never at import time.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.resilience import RetryPolicy

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "dev-admin-key", "dev-key-secret"}


class PostgresSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: SecretStr = SecretStr("")
    database: str = "stratus"
    # Enough connections for the concurrency a service sees: overflow connections are opened
    # and closed per burst, which costs far more than the query (a TLS attempt, auth, setup).
    pool_size: int = 20
    max_overflow: int = 5
    # asyncpg's sslmode: "disable" on loopback and inside compose; "require"/"verify-full"
    # where the database is across a network.
    ssl: str = "disable"
    statement_timeout_ms: int = 30_000
    connect_timeout_s: float = 0.8  # a request never hangs on a database that is away
    # PostgreSQL's JIT compiler for Stratus's sessions (STRATUS_POSTGRES__JIT). Off: every
    # statement here is short, and the planner's estimate of a few (set-based statements
    # over ``generate_series`` that mostly touch no row) passes the JIT thresholds, so
    # PostgreSQL compiled them with LLVM on every call, about a second of CPU each time for
    # a statement that runs in 0.05 ms.
    jit: bool = False

    def url(self, *, driver: str = "postgresql+asyncpg") -> str:
        pw = self.password.get_secret_value()
        auth = f"{self.user}:{pw}" if pw else self.user
        return f"{driver}://{auth}@{self.host}:{self.port}/{self.database}"


# Backoff levels, one delay queue each (``<prefix>.delayed.<ms>ms``); the default of
# ``RabbitSettings.delay_levels_ms``. A queue's messages all expire after at most its fixed
# TTL; RabbitMQ expires messages only at the head of a queue, so one queue per level keeps a
# short delay from waiting behind a long one. A message may carry a shorter per-message TTL
# (jitter) within its level: it then waits at most its level.
DELAY_LEVELS_MS: tuple[int, ...] = (
    500,
    1_000,
    2_000,
    4_000,
    8_000,
    16_000,
    32_000,
    64_000,
    128_000,
)


class RabbitSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 5672
    user: str = "guest"
    password: SecretStr = SecretStr("guest")
    vhost: str = "stratus"
    exchange: str = "stratus.events"
    queue_prefix: str = "stratus"
    delivery_limit: int = 5
    # Pause between a robust connection's attempts to reconnect once the broker went away:
    # aio-pika's default (5 s) added up to 5 s to every recovery from a broker restart.
    reconnect_interval_s: float = Field(default=1.0, gt=0)
    # A consumer's transient failure waits ``retry_initial_s * retry_multiplier**(n-1)``
    # (at most ``retry_max_interval_s``, +-``retry_jitter``) in a delay queue, then comes back;
    # past ``delivery_limit`` retries it is dead-lettered.
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_multiplier: float = Field(default=2.0, ge=1)
    retry_max_interval_s: float = Field(default=30.0, gt=0)
    retry_jitter: float = Field(default=0.2, ge=0, lt=1)
    # The delay queues, one per level (``<prefix>.delayed.<ms>ms``): a delay waits in the
    # shortest level that holds it (JSON list in the environment, e.g. ``[500, 2000, 8000]``).
    delay_levels_ms: tuple[int, ...] = DELAY_LEVELS_MS

    @field_validator("delay_levels_ms")
    @classmethod
    def _ascending_levels(cls, levels: tuple[int, ...]) -> tuple[int, ...]:
        if not levels or any(v <= 0 for v in levels) or list(levels) != sorted(set(levels)):
            raise ValueError("delay levels must be positive, distinct and ascending")
        return levels

    def consumer_retry(self) -> RetryPolicy:
        return RetryPolicy(
            initial_s=self.retry_initial_s,
            multiplier=self.retry_multiplier,
            max_interval_s=self.retry_max_interval_s,
            jitter=self.retry_jitter,
        )

    def url(self) -> str:
        from urllib.parse import quote

        pw = quote(self.password.get_secret_value(), safe="")
        return f"amqp://{self.user}:{pw}@{self.host}:{self.port}/{quote(self.vhost, safe='')}"


class RedisSettings(BaseModel):
    url: str = "redis://127.0.0.1:6379/0"


class OutboxSettings(BaseModel):
    enabled: bool = True
    interval_s: float = 0.5
    batch_size: int = 500


class QuotaDefaults(BaseModel):
    """Platform defaults for a tenant's quotas (a tenant's own values override them)."""

    max_running_jobs: int = 64
    max_queued_jobs: int = 10_000
    cpu_seconds_per_day: int = 86_400 * 4
    storage_bytes: int = 100 * 2**30
    requests_per_second: float = 200.0

    def effective(self, stored: dict[str, Any]) -> dict[str, Any]:
        """A tenant's quotas with the platform defaults filled in."""
        merged = self.model_dump()
        merged.update({k: v for k, v in stored.items() if v is not None and k in merged})
        return merged


class TierSettings(BaseModel):
    """One storage tier. ``kind`` is the fsspec protocol: ``file`` (a directory, ``root``) or
    ``s3`` (``bucket`` on any S3-compatible ``endpoint_url``). ``options`` are passed to the
    fsspec filesystem as they are, so that another protocol is configuration."""

    kind: str = "file"
    root: str = ""
    bucket: str = "stratus"
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    options: dict[str, Any] = Field(default_factory=dict)
    # None: offered when its settings say where it is (``configured``); True: offered as it
    # is (an S3 tier whose credentials come from the environment or an instance role);
    # False: never offered.
    enabled: bool | None = None

    @property
    def configured(self) -> bool:
        """Whether the tier is offered at all (jobs' ``output_tier``, uploads, migrations,
        ``GET /v1/tiers``): a directory always; an S3 tier once it has a bucket and a key
        pair, so that an unset one is a 422 at once instead of uploads and copies that fail
        for want of credentials."""
        if self.enabled is not None:
            return self.enabled
        if self.kind == "s3":
            return bool(self.bucket) and _set(self.access_key_id) and _set(self.secret_access_key)
        return True


def _set(secret: SecretStr | None) -> bool:
    return secret is not None and secret.get_secret_value() != ""


class LocalTierSettings(TierSettings):
    root: str = "run/data/local"


class ArchiveTierSettings(TierSettings):
    root: str = "run/data/archive"


class S3TierSettings(TierSettings):
    kind: str = "s3"
    endpoint_url: str | None = "http://127.0.0.1:9000"


class StorageSettings(BaseModel):
    """Storage tiers (``STRATUS_STORAGE__S3__ENDPOINT_URL`` ...); ``extra`` adds more by name."""

    local: LocalTierSettings = Field(default_factory=LocalTierSettings)
    archive: ArchiveTierSettings = Field(default_factory=ArchiveTierSettings)
    s3: S3TierSettings = Field(default_factory=S3TierSettings)
    extra: dict[str, TierSettings] = Field(default_factory=dict)
    default_tier: str = "local"
    chunk_bytes: int = Field(default=8 * 2**20, ge=5 * 2**20)  # S3 parts are at least 5 MiB
    fsync: bool = True  # flush a file before publishing it (rename)

    def tiers(self) -> dict[str, TierSettings]:
        """The configured tiers by name: the only ones any service offers or opens."""
        every = {"local": self.local, "archive": self.archive, "s3": self.s3, **self.extra}
        return {name: tier for name, tier in every.items() if tier.configured}

    @model_validator(mode="after")
    def _default_is_configured(self) -> StorageSettings:
        if self.default_tier not in self.tiers():
            raise ValueError(f"the default tier {self.default_tier!r} is not configured")
        return self


class JobLimits(BaseModel):
    """What one job may use, enforced where it runs and checked at submission
    (``STRATUS_LIMITS__JOB_MEMORY_MB`` ...)."""

    # Memory of one job (its pool process's address space, MiB). 0: the host's memory times
    # ``memory_fraction``, shared by ``os.cpu_count()`` slots.
    job_memory_mb: int = Field(default=0, ge=0)
    memory_fraction: float = Field(default=0.8, gt=0, le=1)
    # A result (the kernel's JSON) larger than this is stored as a dataset the job names.
    result_inline_max_bytes: int = Field(default=64 * 2**10, ge=1024)

    def job_memory_bytes(self, slots: int | None = None) -> int:
        if self.job_memory_mb:
            return self.job_memory_mb * 2**20
        total = _host_memory_bytes()
        return int(total * self.memory_fraction) // max(1, slots or os.cpu_count() or 1)


@functools.cache
def _host_memory_bytes() -> int:
    """The host's memory, read once (the gateway checks each submission against it)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class WebhookSettings(BaseModel):
    """Jobs' ``notify`` (``STRATUS_WEBHOOKS__ALLOW`` ...): which destinations may be called,
    how the tenants' signing secrets are kept, and the scheduler's delivery loop
    (``shared.webhooks``, ``services.scheduler.webhooks``)."""

    # Comma-separated CIDRs and host names a destination may be in or named by although it is
    # private, loopback, link-local ... (every such address is refused unless listed here).
    allow: str = ""
    # Encrypts the tenants' webhook secrets at rest (AES-GCM with a key derived from it); empty:
    # they are stored as they are, readable to whoever reads the database.
    secret_key: SecretStr = SecretStr("")
    enabled: bool = True  # the scheduler's delivery loop
    interval_s: float = Field(default=1.0, gt=0)
    concurrency: int = Field(default=16, ge=1)  # deliveries in flight per scheduler
    timeout_s: float = Field(default=10.0, gt=0)  # a whole request; longer is a failure
    resolve_timeout_s: float = Field(default=2.0, gt=0)
    # failed deliveries are retried after backoff_s, doubling up to backoff_max_s, for retry_for_s
    backoff_s: float = Field(default=10.0, gt=0)
    backoff_max_s: float = Field(default=3600.0, gt=0)
    retry_for_s: float = Field(default=86_400.0, gt=0)
    # delivered and given-up deliveries are kept this long (what was sent), then deleted
    keep_s: float = Field(default=7 * 86_400.0, ge=0)


class CommonSettings(BaseSettings):
    """Settings every service reads. Nested blocks use ``__``: ``STRATUS_POSTGRES__HOST``."""

    model_config = SettingsConfigDict(
        env_prefix="STRATUS_", env_nested_delimiter="__", extra="ignore"
    )

    environment: str = "development"
    log_level: str = "INFO"
    log_json: bool = True
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    rabbit: RabbitSettings = Field(default_factory=RabbitSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    quotas: QuotaDefaults = Field(default_factory=QuotaDefaults)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    limits: JobLimits = Field(default_factory=JobLimits)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    host: str = "127.0.0.1"
    port: int = 8000
    # How long an idle HTTP connection stays open. Longer than clients keep idle connections
    # (httpx 5 s, aiohttp 15 s) and than a load balancer's idle timeout (60 s on AWS ALB):
    # the client closes first, instead of reusing a connection the server is closing at
    # that moment (uvicorn's default of 5 s equals httpx's, so under load such a client saw
    # ReadError now and then).
    http_keep_alive_s: int = Field(default=75, gt=0)
    key_secret: SecretStr = SecretStr("dev-key-secret")
    # SIGTERM: how long a service lets the work in progress finish before cancelling it
    shutdown_grace_s: float = 10.0

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> CommonSettings:
        secret = self.key_secret.get_secret_value()
        if self.environment != "development" and secret in PLACEHOLDER_SECRETS:
            raise ValueError("STRATUS_KEY_SECRET must be set outside development")
        return self
