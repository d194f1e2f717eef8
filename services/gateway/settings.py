"""Gateway settings."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from services.gateway.jobs.schemas import ARRAY_SIZE_LIMIT
from shared.settings import PLACEHOLDER_SECRETS, CommonSettings


class GatewaySettings(CommonSettings):
    port: int = 8000
    admin_key: SecretStr = SecretStr("dev-admin-key")
    auth_cache_ttl_s: float = 30.0
    max_body_bytes: int = 1_048_576
    # A request body (dataset uploads aside) must arrive whole within ``body_timeout_s`` of the
    # request's start, and no body, uploads included, may pause longer than
    # ``body_idle_timeout_s`` between two pieces: a client that trickles its body gets 408
    # and its connection closed instead of holding a slot.
    body_timeout_s: float = Field(default=30.0, gt=0)
    body_idle_timeout_s: float = Field(default=30.0, gt=0)
    default_timeout_s: int = 3600
    default_max_retries: int = 3
    idempotency_window_s: int = 86_400
    # Group commit of submissions (services/gateway/jobs/writer.py): a batch is written once
    # this many rows wait, or this long after its first row arrived, whichever comes first;
    # a row that came this long or longer after the one before it is written at once.
    # STRATUS_SUBMIT_BATCH_MAX_ROWS / STRATUS_SUBMIT_BATCH_LINGER_S; a linger of 0 writes
    # whatever has gathered while the previous batch was being written.
    submit_batch_max_rows: int = Field(default=64, ge=1, le=1000)
    submit_batch_linger_s: float = Field(default=0.002, ge=0.0, le=0.1)
    # The most elements one array may have (STRATUS_ARRAY_MAX_SIZE); each element is a job for
    # the tenant's max_queued_jobs, so a tenant's quota may bound an array more tightly.
    array_max_size: int = Field(default=100_000, ge=1, le=ARRAY_SIZE_LIMIT)
    # GET /v1/events: a comment line after this long without an event
    # (STRATUS_EVENTS_KEEP_ALIVE_S), and the events hub's safety poll, for a NOTIFY lost
    # while its listener reconnects (STRATUS_EVENTS_POLL_S)
    events_keep_alive_s: float = Field(default=15.0, gt=0.0, le=15.0)
    events_poll_s: float = Field(default=2.0, gt=0.0, le=60.0)

    @model_validator(mode="after")
    def _refuse_placeholder_admin_key(self) -> GatewaySettings:
        secret = self.admin_key.get_secret_value()
        if self.environment != "development" and secret in PLACEHOLDER_SECRETS:
            raise ValueError("STRATUS_ADMIN_KEY must be set outside development")
        return self
