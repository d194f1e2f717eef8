"""Tenant service settings."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class TenantSettings(CommonSettings):
    port: int = 8004
    # How long a batch of job.finished events may wait for more before their usage is written
    # (one statement and one ack per batch). Usage is read by people and by fair share's
    # decayed averages, for which a fraction of a second is nothing; at a steady load a longer
    # wait means fewer, larger batches.
    usage_batch_wait_s: float = Field(default=0.05, ge=0.0, le=5.0)
