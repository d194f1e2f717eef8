"""Datamover service settings: concurrency, leases, retries and the circuit breaker."""

from __future__ import annotations

import socket

from pydantic import Field

from shared.resilience import RetryPolicy
from shared.settings import CommonSettings


class DatamoverSettings(CommonSettings):
    port: int = 8003
    name: str = ""  # owner id of this process's leases; default host:port (stable on restart)
    migrations_per_tenant: int = Field(default=3, ge=1)  # RUNNING at once; the rest wait in order
    max_active: int = Field(default=8, ge=1)  # migrations this process runs at once
    in_flight: int = Field(default=4, ge=1)  # chunks in flight per migration
    claim_interval_s: float = 1.0
    lease_s: float = 15.0
    progress_interval_s: float = 0.5  # bytes_done, done chunks and the lease, written this often
    # Bandwidth cap per migration in bytes/s (0: none).
    throttle_bytes_per_s: float = 0.0
    retry_initial_s: float = 0.5
    retry_multiplier: float = 2.0
    retry_max_interval_s: float = 10.0
    retry_max_attempts: int = Field(default=8, ge=1)
    breaker_failure_threshold: int = 5
    breaker_reset_s: float = 5.0
    # Abandoned partial objects (S3 multipart uploads, temporary files) that no live migration
    # owns are aborted once older than sweep_after_s (longer than any upload may take).
    sweep_enabled: bool = True
    sweep_interval_s: float = 3600.0
    sweep_after_s: float = Field(default=86_400.0, ge=0)

    def owner(self) -> str:
        return self.name or f"{socket.gethostname()}:datamover:{self.port}"

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            initial_s=self.retry_initial_s,
            multiplier=self.retry_multiplier,
            max_interval_s=self.retry_max_interval_s,
            max_attempts=self.retry_max_attempts,
        )
