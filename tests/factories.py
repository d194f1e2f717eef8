"""Rows for tests that need a job in the database without going through the API."""

from __future__ import annotations

import uuid
from typing import Any

from shared.db.models import Job


def new_job(tenant_id: uuid.UUID, **fields: Any) -> Job:
    """A PENDING ``montecarlo_pi`` job on the CPU; ``fields`` override any column."""
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "kernel": "montecarlo_pi",
        "device": "cpu",
        "params": {"samples": 1},
        "inputs": {},
        "outputs": {},
        "labels": {},
        "priority": 0,
        "timeout_s": 60,
        "max_retries": 2,
        "state": "PENDING",
        "attempts": 0,
    }
    values.update(fields)
    return Job(**values)
